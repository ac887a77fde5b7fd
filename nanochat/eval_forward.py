"""
The forward of the scoring evaluations (letter logits of the chat tasks, CORE's losses and
argmaxes): logits at every position of a batch, at a fixed r or under adaptive exit, and the
loop iterations each position ran.

Fixed r (exit_threshold < 0): model(idx, r=r); every position runs r iterations.
Adaptive (exit_threshold >= 0): one prefill of the whole batch through a fresh exact KV cache
whose exit criterion is "kl" (kv_cache.KVCache, GPT._forward_cached): each position stops
iterating once the KL between the next-token distributions of two successive iterations falls
under the threshold, r being the cap; the cache is dropped afterwards. This is the per-token
rule the engine applies to decoded tokens, applied to every position of the prompt at once.
Threshold 0 never stops a position, so it computes the fixed-r function
(tests/test_eval_forward.py checks the logits are equal).

Which depths a score reports: the depths of the positions whose logits are scored, averaged
over them: the last prompt position for a letter-logit question (one position per question);
for a CORE example, the positions that predict its continuation tokens, over every row
(choice) of the example. Earlier positions run adaptively too (their entries are what the
scored positions attend to), but their depths are not counted.
"""

import torch

from nanochat.kv_cache import KVCache

EXIT_CRITERION = "kl"  # the criterion of every adaptive eval (chat_eval's generative tasks too)


@torch.no_grad()
def scoring_forward(model, idx, r=None, exit_threshold=-1.0):
    """(logits (B, T, V) fp32, depth (B, T) int64 or None). depth is None at a fixed r (every
    position ran r iterations); under adaptive exit it is each position's iteration count."""
    if exit_threshold < 0:
        return model(idx, r=r), None
    if model.config.arch == "gpt":
        raise ValueError("adaptive exit needs a looped model: arch='gpt' has no loop")
    r = model._default_r(r)
    B, T = idx.shape
    cache = KVCache(model, B, T, max_r=r, exit_criterion=EXIT_CRITERION, exit_threshold=exit_threshold)
    logits = model(idx, r=r, kv_cache=cache)
    return logits, cache.depth


class DepthMeter:
    """Sum and count of the depths of scored positions; mean() is r at a fixed r."""

    def __init__(self, r):
        self.r, self.sum, self.count = r, 0.0, 0

    def add(self, depth, rows, cols):
        """depth (B, T) or None (fixed r); rows, cols: the scored positions (ints or index lists)."""
        if depth is None:
            return
        picked = depth[rows, cols]
        self.sum += float(picked.sum())
        self.count += picked.numel()

    def mean(self):
        if self.count:
            return self.sum / self.count
        return float(self.r) if self.r is not None else float("nan")
