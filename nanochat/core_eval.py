"""
CORE: the in-context-learning ensemble of DCLM (Li et al. 2024, arXiv:2406.11794), scored the
way nanochat's evaluator scores it, so that one model on one bundle gets the same per-example
results and the same CORE figure from either.

Order and few-shot draw. A task's examples are shuffled with random.Random(1337) and cropped
to max_per_task (so a cropped run evaluates a prefix of the full one). Example idx shows
num_fewshot others, random.Random(1234 + idx).sample(every index but idx, num_fewshot): fixed
per example, never the example itself, the same on every rank and every run.

Prompts: the few-shot blocks, each followed by a blank line, then the example ("d" is the
task's continuation delimiter):
  multiple_choice    block "{query}{d}{choices[gold]}"            prompts "{query}{d}{choice}", one per choice
  schema             block "{context_options[gold]}{d}{continuation}"  prompts "{option}{d}{continuation}", one per option
  language_modeling  block "{context.strip()}{d}{continuation}"   prompt "{context.strip()}{d}{continuation}",
                     and the same without the continuation, then .strip()-ed
Each prompt is tokenised with BOS in front. The continuation is: for multiple_choice, the
tokens after the prefix common to all prompts; for schema, the suffix common to all prompts;
for language_modeling, the tokens after those of the prompt without continuation.

Scoring: multiple_choice and schema pick the prompt with the lowest mean loss over its
continuation tokens (ties: the first; a choice whose tokens are all in the common prefix has an
empty continuation, a NaN mean, and wins only as the first choice, as in nanochat);
language_modeling is correct when every continuation token is the model's argmax (an empty
continuation counts wrong). All prompts of an example go through one forward, right-padded
with BOS (the model is causal: padding never changes the positions scored).
centered = (accuracy - b) / (1 - b), b = the task's random baseline / 100; CORE = the mean of
centered over the tasks evaluated.

Adaptive exit (exit_threshold >= 0, r the cap): the forward of each example is one prefill
with per-position exit (nanochat/eval_forward.py); a task reports the mean depth of the
positions that predict its continuation tokens (every choice's), CORE the mean over tasks.

Where this differs from nanochat, and why:
- A prompt longer than max_seq_len (default: the model's training context) loses tokens from
  the LEFT. nanochat crops only for models that declare a max_seq_len (its GPT-2 wrapper) and
  runs its own models past their training context. If the continuation, with the one token
  before it that predicts its first token, does not fit, the example is counted WRONG and
  reported as "skipped" with a warning: a cropped continuation is never scored.
- nanochat asserts that the language_modeling prompt without continuation tokenises to a
  prefix of the one with it; where it does not, the continuation here starts after the
  common prefix instead of crashing.
"""

import os
import random
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import Progress, centered_accuracy, print0, rank_world
from nanochat.eval_forward import DepthMeter, scoring_forward
from nanochat.eval_bundle import load_baselines, load_rows, load_tasks

SHUFFLE_SEED = 1337   # nanochat's task order
FEWSHOT_SEED = 1234   # + example index: nanochat's few-shot draw
PROGRESS_SECONDS = 30  # a progress line (with ETA) within a task at most this often


# -----------------------------------------------------------------------------
# examples and prompts

def evaluation_order(rows, max_per_task=-1):
    """The examples in evaluation order: shuffled with a fixed seed, cropped to max_per_task (-1 = all)."""
    rows = list(rows)
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows[:max_per_task] if max_per_task > 0 else rows


def fewshot_indices(n, idx, k):
    """The k example indices shown before example idx of n: fixed per idx, never idx."""
    if k == 0:
        return []
    if k > n - 1:
        raise ValueError(f"{k}-shot needs at least {k + 1} examples, the task has {n} (raise --max-per-task)")
    return random.Random(FEWSHOT_SEED + idx).sample([i for i in range(n) if i != idx], k)


def render_prompts(task_type, item, delimiter, shots):
    """The prompt strings of one example (see the module docstring). language_modeling gives
    [without continuation, with continuation]."""
    if task_type == "multiple_choice":
        head = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{head}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        head = "".join(f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots)
        return [f"{head}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    if task_type == "language_modeling":
        head = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in shots)
        prompt = f"{head}{item['context'].strip()}{delimiter}"
        return [prompt.strip(), prompt + item["continuation"]]
    raise ValueError(f"task type {task_type!r}: expected multiple_choice, schema or language_modeling")


def common_length(seqs, from_end=False):
    """Length of the prefix (or suffix) shared by all sequences."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


def tokenize_example(tokenizer, task_type, prompts):
    """(token rows, starts, ends): row i's continuation is tokens[i][starts[i]:ends[i]]."""
    rows = tokenizer.encode(prompts, prepend=tokenizer.get_bos_token_id())
    if task_type == "language_modeling":
        without, with_ = rows
        return [with_], [common_length([without, with_])], [len(with_)]
    ends = [len(t) for t in rows]
    if task_type == "multiple_choice":
        return rows, [common_length(rows)] * len(rows), ends
    suffix = common_length(rows, from_end=True)  # schema: the shared continuation
    return rows, [e - suffix for e in ends], ends


def crop_left(rows, starts, ends, max_len):
    """Keep the last max_len tokens of each row; None when a continuation would not keep the
    token before it (which predicts its first token)."""
    cuts = [max(len(t) - max_len, 0) for t in rows]
    if any(s - cut < 1 for s, cut in zip(starts, cuts)):
        return None
    return ([t[cut:] for t, cut in zip(rows, cuts)], [s - cut for s, cut in zip(starts, cuts)],
            [e - cut for e, cut in zip(ends, cuts)])


# -----------------------------------------------------------------------------
# scoring

@torch.no_grad()
def score_rows(model, rows, starts, ends, task_type, pad_id, device, r=None, exit_threshold=-1.0, depths=None):
    """Prediction of one example: the index of the chosen prompt (multiple_choice, schema), or
    whether every continuation token is the argmax (language_modeling). exit_threshold >= 0:
    adaptive exit (eval_forward.py); the depths of the positions that predict continuation
    tokens are added to `depths` (an eval_forward.DepthMeter)."""
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, t in enumerate(rows):
        ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    ids = ids.to(device)
    logits, depth = scoring_forward(model, ids, r, exit_threshold)  # (B, T, V), (B, T) or None
    if depths is not None:
        scored = [(i, t) for i, (s, e) in enumerate(zip(starts, ends)) for t in range(s - 1, e - 1)]
        if scored:
            depths.add(depth, [i for i, _ in scored], [t for _, t in scored])
    if task_type == "language_modeling":
        s, e = starts[0], ends[0]
        return bool(torch.equal(logits[0, s - 1:e - 1].argmax(dim=-1), ids[0, s:e]))
    V = logits.size(-1)
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1),
                             reduction="none").view(len(rows), -1)  # (B, T-1): losses[:, t] predicts ids[:, t+1]
    means = [losses[i, s - 1:e - 1].mean().item() for i, (s, e) in enumerate(zip(starts, ends))]
    best = 0
    for i, m in enumerate(means):  # strict "<": ties (and a NaN of an empty continuation) keep the first
        if m < means[best]:
            best = i
    return best


def evaluate_example(model, tokenizer, task, rows, idx, device, r, max_seq_len, exit_threshold=-1.0, depths=None):
    """(correct, skipped) for example idx of rows; skipped = counted wrong because its
    continuation does not fit in max_seq_len tokens. exit_threshold, depths: as score_rows."""
    item = rows[idx]
    shots = [rows[i] for i in fewshot_indices(len(rows), idx, task.num_fewshot)]
    prompts = render_prompts(task.task_type, item, task.delimiter, shots)
    tokens, starts, ends = tokenize_example(tokenizer, task.task_type, prompts)
    if task.task_type == "language_modeling" and starts[0] >= ends[0]:  # nothing to predict: wrong, not vacuously right
        return False, True
    cropped = crop_left(tokens, starts, ends, max_seq_len)
    if cropped is None:
        return False, True
    tokens, starts, ends = cropped
    pred = score_rows(model, tokens, starts, ends, task.task_type, tokenizer.get_bos_token_id(), device, r,
                      exit_threshold, depths)
    return (pred if task.task_type == "language_modeling" else pred == item["gold"]), False


def evaluate_task(model, tokenizer, task, rows, device, r=None, max_seq_len=None, log=None, exit_threshold=-1.0):
    """Accuracy of the model on rows (in evaluation order). Under torchrun rank k takes rows
    k::world and the counts are summed over ranks. Returns dict(accuracy, examples, skipped,
    correct = a 0/1 list per example, mean_depth). max_seq_len defaults to
    model.config.sequence_len. exit_threshold >= 0: adaptive exit with r the cap; mean_depth is
    the mean loop iterations of the positions that predict continuation tokens (r when fixed)."""
    rank, world = rank_world()
    max_seq_len = max_seq_len or model.config.sequence_len
    counts = torch.zeros(2, len(rows), dtype=torch.float32, device=device)  # (correct, skipped) per example
    depths = DepthMeter(r)
    mine = range(rank, len(rows), world)
    progress = Progress(len(mine), f"  {task.label} (rank 0's share)", PROGRESS_SECONDS, log if rank == 0 else None)
    for done, idx in enumerate(mine, 1):
        ok, skipped = evaluate_example(model, tokenizer, task, rows, idx, device, r, max_seq_len, exit_threshold, depths)
        counts[0, idx], counts[1, idx] = float(ok), float(skipped)
        progress.update(extra=f" | acc so far {counts[0].sum().item() / done:.4f}")
    depth_totals = torch.tensor([depths.sum, depths.count], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(counts)
        dist.all_reduce(depth_totals)
    depths.sum, depths.count = depth_totals.tolist()
    correct = counts[0].tolist()
    return dict(accuracy=sum(correct) / max(len(rows), 1), examples=len(rows),
                skipped=int(counts[1].sum().item()), correct=correct, mean_depth=depths.mean())


# -----------------------------------------------------------------------------
# the CORE figure

def core_metric(centered):
    """The mean of the centered accuracies of the tasks evaluated."""
    if not centered:
        raise ValueError("CORE over zero tasks: no task was evaluated")
    return sum(centered.values()) / len(centered)


def evaluate_core(model, tokenizer, bundle_dir, device, r=None, max_per_task=-1, tasks=None,
                  max_seq_len=None, log=print0, exit_threshold=-1.0):
    """CORE of the model on the bundle's core.yaml tasks (or the labels in `tasks`). Tasks
    whose data file is absent are left out and listed under "missing". max_seq_len defaults to
    model.config.sequence_len. exit_threshold >= 0: adaptive exit (r the cap). Collective under
    torchrun: every rank must call it. Returns dict(core, mean_depth (over the tasks' scored
    positions, each task weighted alike), results={label: dict(accuracy, centered, examples,
    skipped, seconds, correct, mean_depth)}, missing=[labels])."""
    all_tasks = load_tasks(bundle_dir)
    if tasks:
        unknown = sorted(set(tasks) - {t.label for t in all_tasks})
        if unknown:
            raise ValueError(f"--tasks: unknown {unknown}; the bundle has {[t.label for t in all_tasks]}")
        all_tasks = [t for t in all_tasks if t.label in tasks]
    baselines = load_baselines(bundle_dir)
    no_baseline = [t.label for t in all_tasks if t.label not in baselines]
    if no_baseline:
        raise ValueError(f"tasks {no_baseline} have no row in the bundle's eval_meta_data.csv")
    max_seq_len = max_seq_len or model.config.sequence_len
    results, missing = {}, []
    for task in all_tasks:
        if not os.path.exists(task.path):
            missing.append(task.label)
            log(f"{task.label:<33} missing: no {task.path}")
            continue
        t0 = time.time()
        rows = evaluation_order(load_rows(task.path), max_per_task)
        res = evaluate_task(model, tokenizer, task, rows, device, r, max_seq_len, log, exit_threshold)
        res["centered"] = centered_accuracy(res["accuracy"], baselines[task.label] / 100)  # the bundle's are percents
        res["seconds"] = time.time() - t0
        results[task.label] = res
        depth = f" | mean depth {res['mean_depth']:.2f} of {r}" if exit_threshold >= 0 else ""
        log(f"{task.label:<33} {res['examples']:>6} examples | acc {res['accuracy']:.4f} | "
            f"centered {res['centered']:+.4f}{depth} | {res['seconds']:.1f}s")
        if res["skipped"]:
            log(f"warning: {task.label}: {res['skipped']} examples counted wrong, their continuation does not "
                f"fit in {max_seq_len} tokens (or is empty)")
    core = core_metric({k: v["centered"] for k, v in results.items()})
    mean_depth = sum(v["mean_depth"] for v in results.values()) / len(results)
    return dict(core=core, mean_depth=mean_depth, results=results, missing=missing)
