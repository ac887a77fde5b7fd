"""
Evaluate a chat model on tasks (tasks/*.py), the way nanochat's chat_eval does, and ChatCORE.

- categorical (ARC, MMLU): one forward over a batch of prompts (render_for_completion, right-
  padded with BOS: the model is causal, so padding never changes the last prompt position);
  the prediction is the answer letter whose logit is highest at the last prompt position,
  among the letters of that question only (conversation["letters"]). No sampling. Under
  adaptive exit the whole batch is one prefill with per-position exit (eval_forward.py), and
  the depth reported is that of the scored (last prompt) position.
- generative (GSM8K, HumanEval, SpellingBee): replies sampled through the engine, a batch of
  prompts at a time with num_samples rows each; a problem counts as solved at k when any of
  its first k samples passes task.evaluate (pass@k, k = 1..num_samples).
- ChatCORE: the mean over tasks of the centered accuracy (acc - b) / (1 - b), with b = 0.25
  for the 4-choice tasks and 0 for the open-ended ones (nanochat's baselines).

Problems: the first max_problems of the task (-1 = all), in the task's seeded shuffled order,
so a prefix is a representative subset; dealt to ranks round-robin (problem i to rank i mod W);
the counts are summed over ranks with one all_reduce, so every rank
returns the same numbers. Collective under torchrun: every rank must call.
"""

import torch
import torch.distributed as dist

from nanochat.common import Progress, centered_accuracy, rank_world
from nanochat.eval_forward import DepthMeter, scoring_forward

# random-guess accuracy of each task (nanochat): 1 of 4 letters, or open-ended
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}


def chatcore(accuracies, baselines=BASELINES):
    """The mean centered accuracy over the tasks of `accuracies` ({task name: accuracy})."""
    if not accuracies:
        raise ValueError("ChatCORE over zero tasks")
    unknown = sorted(set(accuracies) - set(baselines))
    if unknown:
        raise ValueError(f"ChatCORE: no random baseline for {unknown}; known: {sorted(baselines)}")
    return sum(centered_accuracy(a, baselines[t]) for t, a in accuracies.items()) / len(accuracies)


def _sum_over_ranks(values, device):
    """A list of numbers summed over ranks (float64, one all_reduce)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _my_problems(task, max_problems):
    n = len(task) if max_problems is None or max_problems < 0 else min(len(task), max_problems)
    rank, world = rank_world()
    return n, list(range(rank, n, world))


PROGRESS_SECONDS = 30  # a progress line (with ETA) within a task at most this often


def _progress(task, mine, log):
    """Progress over this rank's problems, shown on rank 0 only."""
    return Progress(len(mine), "problems (rank 0's share)", PROGRESS_SECONDS, log if rank_world()[0] == 0 else None)


def letter_ids(tokenizer, letters):
    """The token id of each answer letter; each must encode to exactly one token."""
    ids = []
    for letter in letters:
        tokens = tokenizer.encode(letter)
        if len(tokens) != 1:
            raise ValueError(f"answer letter {letter!r} encodes to {len(tokens)} tokens {tokens}, expected 1")
        ids.append(tokens[0])
    return ids


# -----------------------------------------------------------------------------
# categorical

@torch.no_grad()
def evaluate_categorical(model, tokenizer, task, device, r=None, max_problems=-1, batch_size=8, exit_threshold=-1.0,
                         log=None):
    """dict(accuracy, correct, total, mean_depth). model(idx, r=r) -> (B, T, V) logits.
    exit_threshold >= 0: adaptive exit (eval_forward.scoring_forward, r the cap); mean_depth is
    the mean loop iterations of the scored position (the last of each prompt), r when fixed.
    log: where progress lines with an ETA go (rank 0; None: silent)."""
    n, mine = _my_problems(task, max_problems)
    progress = _progress(task, mine, log)
    bos = tokenizer.get_bos_token_id()
    max_len = getattr(model, "rotary_len", None)
    correct, depths = 0, DepthMeter(r)
    for b0 in range(0, len(mine), batch_size):
        conversations = [task[i] for i in mine[b0:b0 + batch_size]]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        if max_len is not None:
            prompts = [p[-max_len:] for p in prompts]  # keep the end: the choices and <|assistant_start|>
        T = max(len(p) for p in prompts)
        idx = torch.tensor([p + [bos] * (T - len(p)) for p in prompts], dtype=torch.long, device=device)  # (B, T)
        logits, depth = scoring_forward(model, idx, r, exit_threshold)  # (B, T, V), (B, T) or None
        depths.add(depth, list(range(len(prompts))), [len(p) - 1 for p in prompts])
        for row, (conversation, prompt) in enumerate(zip(conversations, prompts)):
            letters = conversation["letters"]
            scores = logits[row, len(prompt) - 1, letter_ids(tokenizer, letters)]  # (n_letters,)
            predicted = letters[int(scores.argmax())]
            correct += bool(task.evaluate(conversation, predicted))
        progress.update(len(conversations))
    correct, total, depths.sum, depths.count = _sum_over_ranks([correct, len(mine), depths.sum, depths.count], device)
    assert total == n, f"ranks evaluated {total} problems, expected {n}"
    return dict(accuracy=correct / max(total, 1), correct=int(correct), total=int(total), mean_depth=depths.mean())


# -----------------------------------------------------------------------------
# generative

def sample_replies(engine, prompts, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, seed=0):
    """Sample num_samples replies to each prompt through the engine, as rows (prompt-major):
    dict(tokens, sampled, stop, depths). tokens: the reply, tool-output tokens included, the
    stop token left out; sampled: per token, True if the model sampled it, False if the engine
    forced it (tool output); stop: the stop token the model sampled (<|assistant_end|> or BOS),
    or None when the reply hit max_tokens; depths: loop iterations behind each token."""
    rows = [dict(tokens=[], sampled=[], stop=None, depths=[]) for _ in range(len(prompts) * num_samples)]
    finished = [False] * len(rows)
    for step in engine.generate(prompts, num_samples=num_samples, max_tokens=max_tokens,
                                temperature=temperature, top_k=top_k, seed=seed):
        for b, row in enumerate(rows):
            if finished[b]:
                continue
            if step.done[b]:  # this step's token is the sampled stop token
                row["stop"], finished[b] = step.tokens[b], True
                continue
            row["tokens"].append(step.tokens[b])
            row["sampled"].append(bool(step.sampled[b]))
            row["depths"].append(step.depths[b])
    return rows


def evaluate_generative(engine, tokenizer, task, device, num_samples=1, max_new_tokens=512, temperature=0.0,
                        top_k=None, max_problems=-1, batch_size=8, seed=0, log=None):
    """dict(accuracy = pass@num_samples, pass_at = {k: pass@k}, total, mean_depth): mean_depth
    is the mean loop iterations per generated token (< r only under adaptive exit). log: as in
    evaluate_categorical."""
    n, mine = _my_problems(task, max_problems)
    progress = _progress(task, mine, log)
    max_len = getattr(engine.model, "rotary_len", None)
    passed = [0] * num_samples  # passed[k-1]: problems solved by one of the first k samples
    depth_sum = depth_count = 0
    for b0 in range(0, len(mine), batch_size):
        indices = mine[b0:b0 + batch_size]
        conversations = [task[i] for i in indices]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        if max_len is not None:
            prompts = [p[-max(max_len - max_new_tokens, 1):] for p in prompts]  # prompt + reply within the rotary table
        rows = sample_replies(engine, prompts, num_samples, max_new_tokens, temperature, top_k, seed=seed + indices[0])
        for j, conversation in enumerate(conversations):
            outcomes = [bool(task.evaluate(conversation, tokenizer.decode(row["tokens"])))
                        for row in rows[j * num_samples:(j + 1) * num_samples]]
            for k in range(num_samples):
                passed[k] += any(outcomes[:k + 1])
        depth_sum += sum(sum(row["depths"]) for row in rows)
        depth_count += sum(len(row["depths"]) for row in rows)
        progress.update(len(conversations))
    *passed, total, depth_sum, depth_count = _sum_over_ranks([*passed, len(mine), depth_sum, depth_count], device)
    assert total == n, f"ranks evaluated {total} problems, expected {n}"
    pass_at = {k + 1: p / max(total, 1) for k, p in enumerate(passed)}
    return dict(accuracy=pass_at[num_samples], pass_at=pass_at, total=int(total),
                mean_depth=depth_sum / depth_count if depth_count else float("nan"))
