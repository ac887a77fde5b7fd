"""
The report card: one markdown file per pipeline stage in $NANOCHAT_BASE_DIR/report/, assembled
into report.md with the machine, a summary table of the key metrics and a cost estimate.

    python -m nanochat.report reset       # at the start of a run: clears the sections, writes the header
    get_report().log(section="Base model training", data=[vars(args), {"val bpb": 0.81}])  # in a script
    python -m nanochat.report generate    # at the end: report/report.md, copied to the current directory

A section is a file named by its stage (SECTIONS below); a dict in `data` becomes `- key: value`
lines, a string is written as is (e.g. a markdown table). The summary reads those `- key: value`
lines and the rows of any table whose first column is `r` (becoming `key (r=N)`), so a stage
feeds the summary just by logging a known metric name. Only rank 0 writes; other ranks get a
report whose methods do nothing.

The cost is wall time since `reset` x GPUs x the price of a GPU-hour: NANOCHAT_GPU_HOUR_PRICE
(USD), default 3.00, about an on-demand H100 (8xH100 at $24/hour, the figure nanochat uses).
"""

import datetime
import os
import platform
import re
import shutil
import subprocess
import sys

from nanochat.common import get_base_dir, get_dist_info

# (file stem, title) in pipeline order. Scripts log under the title; base_eval writes its file itself.
SECTIONS = [
    ("tok_train", "Tokenizer training"),
    ("tok_eval", "Tokenizer evaluation"),
    ("base_train", "Base model training"),
    ("base_eval", "Base model evaluation"),
    ("chat_sft", "Chat SFT"),
    ("chat_eval_sft", "Chat evaluation sft"),
    ("chat_rl", "Chat RL"),
    ("chat_eval_rl", "Chat evaluation rl"),
]
# summary columns and the sections that feed each; rows are these metrics, in this order
SUMMARY_STAGES = {"BASE": ("base_train", "base_eval"), "SFT": ("chat_sft", "chat_eval_sft"),
                  "RL": ("chat_rl", "chat_eval_rl")}
SUMMARY_METRICS = ("val bpb", "CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval",
                   "SpellingBee", "ChatCORE")
DEFAULT_GPU_HOUR_PRICE = 3.00  # USD per H100-hour, on demand
HEADER_FILE, REPORT_FILE = "header.md", "report.md"


def _slug(title):
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def _format(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4e}" if value != 0 and not 1e-3 <= abs(value) < 1e5 else f"{value:.4f}"


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reader never sees half a section


# -----------------------------------------------------------------------------
# the machine

def _git(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info():
    """Facts for the header: code version, accelerators, host, software."""
    import torch
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain")
    info = {"Run started": datetime.datetime.now().isoformat(timespec="seconds"),
            "Git commit": "unknown (not a git checkout)" if commit is None else
            f"{commit} on {_git('rev-parse', '--abbrev-ref', 'HEAD')}"
            + (" (dirty: uncommitted changes)" if dirty else " (clean)")}
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        info["GPUs"] = f"{torch.cuda.device_count()} x {' + '.join(names)}"
    else:
        info["GPUs"] = "none (CPU only)"
    info["Nodes"] = int(os.environ.get("SLURM_NNODES", 1))
    info["CPU cores"] = os.cpu_count()
    try:
        info["Memory"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):  # sysconf names are platform-dependent
        info["Memory"] = "unknown"
    info["Platform"] = platform.platform()
    info["Python"] = sys.version.split()[0]
    info["PyTorch"] = f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"
    return info


def estimate_cost(header, end, price):
    """The cost line: wall time from the header's start to `end` x GPUs x nodes x price."""
    start = re.search(r"^- Run started: (\S+)$", header, re.M)
    gpus = re.search(r"^- GPUs: (\d+) x ", header, re.M)
    nodes = re.search(r"^- Nodes: (\d+)$", header, re.M)
    if not start:
        return "- Estimated cost: unknown (no start time: run `python -m nanochat.report reset` first)"
    hours = (end - datetime.datetime.fromisoformat(start.group(1))).total_seconds() / 3600
    line = f"- Wall time: {hours:.2f} h since `report reset`"
    if not gpus:
        return line + "\n- Estimated cost: no GPUs, no GPU cost"
    n = int(gpus.group(1)) * (int(nodes.group(1)) if nodes else 1)
    return (line + f"\n- Estimated cost: {n} GPUs x {hours:.2f} h = {n * hours:.2f} GPU-hours x ${price:.2f}/GPU-hour"
            f" = ${n * hours * price:,.2f} (price: NANOCHAT_GPU_HOUR_PRICE)")


# -----------------------------------------------------------------------------
# reading sections back

def parse_metrics(text):
    """{key: value string} from `- key: value` lines and from tables whose first column is r."""
    metrics, header = {}, None
    for line in text.splitlines():
        line = line.strip()
        bullet = re.match(r"^- ([^:]+): (.+)$", line)
        if bullet:
            metrics[bullet.group(1).strip()] = bullet.group(2).strip()
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == "r":
            header = cells
        elif cells and header and not set(line) <= set("|-: "):
            if len(cells) == len(header) and cells[0].isdigit():
                for name, value in zip(header[1:], cells[1:]):
                    metrics[f"{name} (r={cells[0]})"] = value
        elif not cells:
            header = None
    return metrics


def _metric_order(key):
    """Sort key of a summary row, or None if the key is not a summary metric."""
    for i, name in enumerate(SUMMARY_METRICS):
        m = re.fullmatch(re.escape(name) + r"(?: \(r=(\d+)\))?", key, re.I)
        if m:
            return (i, int(m.group(1) or 0))
    return None


def summary_table(sections):
    """Markdown table: a row per summary metric found, a column per stage."""
    cells = {}
    for column, stems in SUMMARY_STAGES.items():
        for stem in stems:
            for key, value in parse_metrics(sections.get(stem, "")).items():
                if _metric_order(key) is not None:
                    cells.setdefault(key, {})[column] = value
    if not cells:
        return "No summary metrics found in the sections."
    lines = ["| Metric | " + " | ".join(SUMMARY_STAGES) + " |", "|---|" + "---|" * len(SUMMARY_STAGES)]
    for key in sorted(cells, key=_metric_order):
        lines.append(f"| {key} | " + " | ".join(cells[key].get(c, "-") for c in SUMMARY_STAGES) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# the report

class Report:
    def __init__(self, report_dir):
        self.report_dir = report_dir
        os.makedirs(report_dir, exist_ok=True)

    def log(self, section, data):
        """Write one section file (replacing the stage's previous one); returns its path."""
        stem = next((s for s, title in SECTIONS if title == section), _slug(section))
        lines = [f"## {section}", f"timestamp: {datetime.datetime.now().isoformat(timespec='seconds')}", ""]
        for item in data:
            if isinstance(item, dict):
                lines += [f"- {k}: {_format(v)}" for k, v in item.items()] + [""]
            elif item:
                lines += [str(item), ""]
        path = os.path.join(self.report_dir, stem + ".md")
        _write(path, "\n".join(lines))
        return path

    def reset(self):
        """Start a new report: remove every section and the last report, write the header."""
        for name in os.listdir(self.report_dir):
            if name.endswith(".md"):
                os.remove(os.path.join(self.report_dir, name))
        info = machine_info()
        _write(os.path.join(self.report_dir, HEADER_FILE),
               "# looped nanochat training report\n\n" + "\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n")
        return info

    def generate(self, end=None, copy_to=None):
        """Assemble report.md (header, summary, cost, sections in pipeline order, missing ones
        listed) and copy it to `copy_to` (default the current directory). Returns its path."""
        read = lambda name: open(os.path.join(self.report_dir, name)).read().strip()
        files = {n[:-3] for n in os.listdir(self.report_dir) if n.endswith(".md")} - {"header", "report"}
        known = [stem for stem, _ in SECTIONS]
        sections = {stem: read(stem + ".md") for stem in files}
        header = read(HEADER_FILE) if os.path.exists(os.path.join(self.report_dir, HEADER_FILE)) else \
            "# looped nanochat training report\n\n(no header: `python -m nanochat.report reset` was not run)"
        price = float(os.environ.get("NANOCHAT_GPU_HOUR_PRICE", DEFAULT_GPU_HOUR_PRICE))
        missing = [f"{title} (`{stem}.md`)" for stem, title in SECTIONS if stem not in sections]
        parts = [header, "## Summary", summary_table(sections),
                 estimate_cost(header, end or datetime.datetime.now(), price)]
        if missing:
            parts.append("Missing sections (stage not run, or it failed): " + ", ".join(missing))
        parts += [sections[s] for s in known if s in sections] + [sections[s] for s in sorted(files - set(known))]
        path = os.path.join(self.report_dir, REPORT_FILE)
        _write(path, "\n\n".join(parts) + "\n")
        copy = os.path.join(copy_to or os.getcwd(), REPORT_FILE)
        if os.path.abspath(copy) != os.path.abspath(path):
            shutil.copyfile(path, copy)
        return path


class DummyReport:
    """What ranks other than 0 get: every call does nothing."""
    def log(self, *args, **kwargs):
        pass

    def reset(self, *args, **kwargs):
        pass

    def generate(self, *args, **kwargs):
        pass


def get_report():
    _, rank, _, _ = get_dist_info()
    return Report(os.path.join(get_base_dir(), "report")) if rank == 0 else DummyReport()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("reset", "generate"):
        sys.exit("usage: python -m nanochat.report reset|generate")
    report = get_report()
    if sys.argv[1] == "reset":
        info = report.reset()
        print(f"new report in {report.report_dir}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    else:
        path = report.generate()
        print(f"report: {path} (copied to {os.path.join(os.getcwd(), REPORT_FILE)})")
