"""
Inference engine: replies to a batch of prompts, token ids in, token ids out. The decode
loop itself (sampling, stopping, the python tool, the KV cache) is nanochat/scheduler.py's;
the Engine runs a Scheduler of its own for each call, stepped in the caller's thread, so an
eval, RL and the CLI write replies exactly as the server does.

    engine = Engine(model, tokenizer, r=4)                      # exact cache, fixed r
    for step in engine.generate(prompt, num_samples=4, max_tokens=64, temperature=0.8, seed=1):
        step.tokens    # the column: one token per row (rows = prompts x samples, prompt-major)
        step.sampled   # per row: True if sampled, False if forced (tool output)
        step.depths    # per row: loop iterations run for the forward that gave this token
        step.done      # per row: finished at or before this step (the token is not part of the reply)
    results, masks, depths = engine.generate_batch(prompt, num_samples=4, max_tokens=64)

- Each prompt is prefilled once, in one batch with the others, and its cache copied into
  each of its sample rows; each row samples with its own generator (row 0 seeded with
  `seed`), so a seed reproduces the batch.
- A row finishes when it samples <|assistant_end|> or <|bos|> (that step shows the token,
  marked done) or at max_tokens; the Steps end when every row has.
- Tool use: when a row writes <|python_start|> ... <|python_end|>, the code between runs
  through `tool` (by default nanochat.python_tool in a sandboxed process) and the tokens
  <|output_start|> output <|output_end|> are forced into that row.
- Recurrence: cache_mode "exact" | "shared", warm_start, and adaptive exit
  (exit_criterion "kl" | "state", exit_threshold; r is then the cap) are the options of
  kv_cache.KVCache. The prefill runs r iterations; under adaptive exit the prompt's last token is
  decoded with the exit on, so every reply token (the first too) shows the depth the exit chose.
"""

import time

from nanochat.kv_cache import KVCache
from nanochat.python_tool import run_python
from nanochat.recurrence import resolve_r
from nanochat.scheduler import IDLE_WAIT, Scheduler


class Engine:
    def __init__(self, model, tokenizer, r=None, cache_mode="exact", warm_start=False, exit_criterion=None,
                 exit_threshold=0.0, tool=run_python):
        """r: loop iterations per token (the cap under adaptive exit; None = the recipe's eval r,
        recurrence.resolve_r; callers pass a checkpoint's; 1 for arch="gpt"). tool: code (str) ->
        output (str), or None to disable tool use."""
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        self.r = resolve_r(model.config.arch, requested=r)
        self.cache_mode, self.warm_start = cache_mode, warm_start
        self.exit_criterion, self.exit_threshold = exit_criterion, exit_threshold
        KVCache(model, 1, 1, max_r=self.r, mode=cache_mode, warm_start=warm_start, exit_criterion=exit_criterion,
                exit_threshold=exit_threshold)  # validates the options now

    def generate(self, tokens, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, seed=42, top_p=None):
        """Stream Steps. tokens: one prompt (a list of ids) or several (a list of lists)."""
        prompts = [tokens] if tokens and isinstance(tokens, list) and isinstance(tokens[0], int) else tokens
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, list) and p for p in prompts)):
            raise ValueError("generate: tokens must be a non-empty list of ids, or a list of such lists")
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"generate: num_samples={num_samples!r}: expected an int >= 1")
        longest = max(len(p) for p in prompts)
        sched = Scheduler(self.model, self.tokenizer, max_rows=len(prompts) * num_samples, prefill_chunk=longest,
                          cache_mode=self.cache_mode, max_len=min(longest + max(max_tokens, 1), self.model.rotary_len),
                          tool=self.tool, exit_criterion=self.exit_criterion or "kl", warm_start=self.warm_start)
        threshold = self.exit_threshold if self.exit_criterion is not None else None
        req = sched.submit(prompts, n=num_samples, r=self.r, max_tokens=max_tokens, temperature=temperature,
                           top_k=top_k, seed=seed, exit_threshold=threshold, top_p=top_p)
        try:
            while True:
                while (step := req.poll()) is not None:
                    yield step
                if req.over:
                    return
                if not sched.step():
                    time.sleep(IDLE_WAIT)  # every row waits on a tool call
        finally:
            req.cancel()
            sched.stop()

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Run generate to the end. Returns (results, masks, depths), one entry per row:
        results = prompt + reply ids (the stop token left out), masks = 0 for prompt and forced
        tokens, 1 for sampled ones, depths = the loop iterations behind each reply token."""
        prompts = [tokens] if tokens and isinstance(tokens[0], int) else tokens
        results = [list(prompts[b // num_samples]) for b in range(len(prompts) * num_samples)]
        masks = [[0] * len(r) for r in results]
        depths = [[] for _ in results]
        for step in self.generate(tokens, num_samples=num_samples, **kwargs):
            for b, token in enumerate(step.tokens):
                if not step.done[b]:
                    results[b].append(token)
                    masks[b].append(int(step.sampled[b]))
                    depths[b].append(step.depths[b])
        return results, masks, depths
