"""
The DCLM eval bundle behind the CORE metric: find it, download it, read it.

A bundle is a folder holding
  core.yaml            the task list: label, dataset_uri (under eval_data/), num_fewshot (a
                       one-element list), icl_task_type, continuation_delimiter (absent = " ")
  eval_meta_data.csv   one row per task label; "Random baseline" is the chance accuracy in %
  eval_data/<category>/<task>.jsonl
nanochat publishes one as a zip whose top folder is eval_bundle/. Online, `python -m
nanochat.eval_bundle` (or scripts/base_eval.py) puts it at $NANOCHAT_BASE_DIR/eval_bundle:
downloaded to a temporary file, extracted to a temporary folder, checked, and only then
renamed into place, so a half-downloaded bundle is never used.
"""

import csv
import json
import os
import shutil
import zipfile
from dataclasses import dataclass

from nanochat.common import Progress, get_base_dir, mib
from nanochat.errors import MissingInput, UserError

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
CONFIG_FILE = "core.yaml"
META_FILE = "eval_meta_data.csv"
DATA_DIR = "eval_data"
DEFAULT_DELIMITER = " "  # llm-foundry's default continuation_delimiter
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")


@dataclass(frozen=True)
class Task:
    label: str
    task_type: str       # multiple_choice | schema | language_modeling
    num_fewshot: int
    delimiter: str       # between context and continuation, in the few-shot blocks too
    path: str            # the jsonl file


def default_bundle_dir():
    return os.path.join(get_base_dir(), "eval_bundle")


# -----------------------------------------------------------------------------
# reading

def check_bundle(bundle_dir):
    """Raise FileNotFoundError naming what a bundle folder lacks."""
    missing = [f for f in (CONFIG_FILE, META_FILE, DATA_DIR) if not os.path.exists(os.path.join(bundle_dir, f))]
    if missing:
        raise MissingInput(f"eval bundle {bundle_dir} lacks {', '.join(missing)} "
                                f"(expected {CONFIG_FILE}, {META_FILE} and {DATA_DIR}/)")


def load_tasks(bundle_dir, config=CONFIG_FILE):
    """The tasks of core.yaml (or another task list in the bundle), in file order."""
    import yaml
    check_bundle(bundle_dir)
    path = os.path.join(bundle_dir, config)
    with open(path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict) or not isinstance(spec.get("icl_tasks"), list):
        raise ValueError(f"{path}: expected a mapping with a list 'icl_tasks'")
    tasks = []
    for entry in spec["icl_tasks"]:
        try:
            label, task_type, uri = entry["label"], entry["icl_task_type"], entry["dataset_uri"]
            shots = entry.get("num_fewshot", [0])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: task entry {entry!r} lacks {e}") from e
        shots = shots[0] if isinstance(shots, list) else shots  # the Mosaic convention: a one-element list
        if task_type not in TASK_TYPES:
            raise ValueError(f"{path}: task {label!r} has icl_task_type {task_type!r}; expected one of {TASK_TYPES}")
        tasks.append(Task(label, task_type, int(shots), entry.get("continuation_delimiter", DEFAULT_DELIMITER),
                          os.path.join(bundle_dir, DATA_DIR, uri)))
    return tasks


def load_baselines(bundle_dir):
    """{label: random baseline in percent} from eval_meta_data.csv."""
    path = os.path.join(bundle_dir, META_FILE)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Eval Task" not in rows[0] or "Random baseline" not in rows[0]:
        raise ValueError(f"{path}: expected columns 'Eval Task' and 'Random baseline'")
    return {row["Eval Task"]: float(row["Random baseline"]) for row in rows}


def load_rows(path):
    """The examples of one task file: a list of dicts, in file order."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i + 1}: not JSON ({e})") from e
    return rows


# -----------------------------------------------------------------------------
# finding and downloading

def resolve_bundle(path=None, download=True):
    """The bundle folder to use: `path` if given (it must be a bundle), else
    $NANOCHAT_BASE_DIR/eval_bundle, downloaded there first if absent and `download`."""
    if path:
        if not os.path.isdir(path):
            raise MissingInput(f"--eval-bundle {path} is not a folder: pass the folder that holds {CONFIG_FILE}")
        check_bundle(path)
        return path
    dest = default_bundle_dir()
    if not os.path.isdir(dest) and download:
        download_bundle(dest)
    if not os.path.isdir(dest):
        raise MissingInput(f"no eval bundle at {dest}: pass --eval-bundle PATH (a folder with {CONFIG_FILE}, "
                                f"{META_FILE} and {DATA_DIR}/), or download it with `python -m nanochat.eval_bundle`")
    check_bundle(dest)
    return dest


def download_bundle(dest, url=EVAL_BUNDLE_URL):
    """Download the zip, extract it, check it, then rename it into place at `dest`."""
    import requests
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    zip_path = f"{dest}.zip.tmp{os.getpid()}"
    tmp_dir = f"{dest}.tmp{os.getpid()}"
    print(f"downloading the eval bundle {url} -> {dest}", flush=True)
    try:
        with requests.get(url, stream=True, timeout=30) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0))
            progress = Progress(total, "  eval bundle", every=5.0, log=lambda line: print(line, flush=True), unit=mib)
            with open(zip_path, "wb") as f:
                for chunk in response.iter_content(1 << 20):
                    f.write(chunk)
                    progress.update(len(chunk))
    except requests.RequestException as e:
        if os.path.exists(zip_path):
            os.remove(zip_path)
        raise MissingInput(f"no eval bundle at {dest} and downloading {url} failed ({type(e).__name__}): pass "
                           f"--eval-bundle PATH (a folder with {CONFIG_FILE}, {META_FILE} and {DATA_DIR}/), "
                           f"or leave CORE out (--eval bpb,sample)") from e
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp_dir)
        # the zip holds eval_bundle/...; accept a bundle at the top level too
        inner = next((os.path.join(tmp_dir, d) for d in [*sorted(os.listdir(tmp_dir)), ""]
                      if os.path.exists(os.path.join(tmp_dir, d, CONFIG_FILE))), None)
        if inner is None:
            raise FileNotFoundError(f"the zip from {url} holds no {CONFIG_FILE}")
        check_bundle(inner)
        missing = [t.path for t in load_tasks(inner) if not os.path.exists(t.path)]
        if missing:
            raise FileNotFoundError(f"the zip from {url} lacks task files: {missing}")
        if os.path.isdir(dest):  # another process finished first
            return dest
        os.replace(inner, dest)
    except zipfile.BadZipFile as e:
        raise UserError(f"the download from {url} is not a valid zip ({e}): try again, or pass --eval-bundle PATH") from e
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if os.path.exists(zip_path):
            os.remove(zip_path)
    print(f"eval bundle ready at {dest}", flush=True)
    return dest


if __name__ == "__main__":
    print(resolve_bundle())
