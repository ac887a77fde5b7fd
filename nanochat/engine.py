"""
Inference engine: KV cache, sampling, the python tool's state machine. Token ids in, token
ids out (the tokenizer is used for its special tokens and to encode the tool's output).

    engine = Engine(model, tokenizer, r=4)                      # exact cache, fixed r
    for step in engine.generate(prompt, num_samples=4, max_tokens=64, temperature=0.8, seed=1):
        step.tokens    # the column: one token per row (rows = prompts x samples, prompt-major)
        step.sampled   # per row: True if sampled, False if forced (tool output)
        step.depths    # per row: loop iterations run for the forward that gave this token
        step.done      # per row: finished at or before this step (the token is not part of the reply)
    results, masks, depths = engine.generate_batch(prompt, num_samples=4, max_tokens=64)

- Prefill once per prompt at batch 1, then copy that cache into each of its sample rows
  (KVCache.insert); prompts of different lengths share the batch (per-row positions).
- Then decode one token per row per step. A row finishes when it samples <|assistant_end|> or
  <|bos|>; finished rows keep being computed (their tokens are ignored) until all are done or
  max_tokens is reached.
- Tool use: when a row writes <|python_start|> ... <|python_end|>, the code between runs
  through `tool` (by default nanochat.execution in a sandboxed process) and the tokens
  <|output_start|> output <|output_end|> are forced into that row, one per step.
- Recurrence: cache_mode "exact" | "shared", warm_start, and adaptive exit
  (exit_criterion "kl" | "state", exit_threshold; r is then the cap) are the options of
  kv_cache.KVCache. The prefill always runs r iterations; adaptive exit applies to decoding.
"""

import ast
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanochat.kv_cache import KVCache
from nanochat.recurrence import resolve_r

TOOL_TIMEOUT = 5.0        # seconds of wall clock per python call
TOOL_MAX_OUTPUT = 2048    # characters of its stdout (or error) that are fed back
GREEDY_BELOW = 1e-3       # temperatures under this sample greedily (logits / 1e-45 overflow to inf, then nan)


def as_repl(code):
    """Make code behave like a Python prompt: a trailing expression's value is printed.
    The training data's tool calls are bare expressions (GSM8K's `48/2`, SpellingBee's
    `'strawberry'.count('r')`) whose outputs were rendered as the value itself, with an
    integral float shown as an int ("24", not "24.0"), so the tool must answer the same way."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # the sandbox reports the error
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body.pop()
    return (ast.unparse(tree) + "\n__value = (" + ast.unparse(last.value) + ")\n"
            "if __value is not None:\n"
            "    print(int(__value) if isinstance(__value, float) and __value.is_integer() else __value)\n")


def run_python(code):
    """The default tool: run code in the sandbox as a Python prompt would; its stdout (or
    stdout and the error), without the final newline."""
    from nanochat.execution import execute_code
    result = execute_code(as_repl(code), timeout=TOOL_TIMEOUT, max_output_bytes=TOOL_MAX_OUTPUT)
    out = result.stdout if result.success else result.stdout + result.error
    return out.rstrip("\n")


def sample_next_token(logits, rng, temperature=1.0, top_k=None):
    """(B, V) fp32 logits -> (B,) token ids. temperature 0 (or under GREEDY_BELOW) is argmax;
    top_k samples among the k most likely tokens; rng is a torch.Generator on the logits' device."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k > 0:
        values, ids = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)  # (B, k)
        choice = torch.multinomial(F.softmax(values / temperature, dim=-1), 1, generator=rng)
        return ids.gather(-1, choice).squeeze(-1)
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=rng).squeeze(-1)


@dataclass
class Step:
    tokens: list
    sampled: list
    depths: list
    done: list


class ChatTokens:
    """The special token ids the reply loop reads."""
    def __init__(self, tokenizer):
        special = tokenizer.encode_special
        self.stop = {special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")


class Reply:
    """One reply's tool state machine (Engine and scheduler.Scheduler): feed it each token; a
    finished python block comes back as its code ids, and `force` queues the tool's output."""
    def __init__(self, chat_tokens):
        self.ids, self.forced, self.code, self.in_python, self.done = chat_tokens, deque(), [], False, False

    def next_token(self, sampled):
        """(token, was_sampled): a pending forced token wins over the sampled one."""
        return (self.forced.popleft(), False) if self.forced else (sampled, True)

    def feed(self, token, was_sampled):
        """Advance on the chosen token. Returns the code ids when it closes a python block, else None."""
        ids = self.ids
        if was_sampled and token in ids.stop:
            self.done = True
        elif token == ids.python_start:
            self.in_python, self.code = True, []
        elif token == ids.python_end and self.in_python:
            self.in_python = False
            return self.code
        elif self.in_python:
            self.code.append(token)
        return None

    def force(self, output_ids):
        self.forced.extend([self.ids.output_start, *output_ids, self.ids.output_end])


class Engine:
    def __init__(self, model, tokenizer, r=None, cache_mode="exact", warm_start=False, exit_criterion=None,
                 exit_threshold=0.0, tool=run_python):
        """r: loop iterations per token (the cap under adaptive exit; None = the recipe's eval r,
        recurrence.resolve_r; callers pass a checkpoint's; 1 for arch="gpt"). tool: code (str) -> output (str), or None to disable tool use."""
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        self.r = resolve_r(model.config.arch, requested=r)
        self.cache_options = dict(mode=cache_mode, warm_start=warm_start, exit_criterion=exit_criterion,
                                  exit_threshold=exit_threshold)
        KVCache(model, 1, 1, max_r=self.r, **self.cache_options)  # validates the options now
        self.chat_tokens = ChatTokens(tokenizer)

    def _cache(self, batch_size, max_len, **overrides):
        return KVCache(self.model, batch_size, max_len, max_r=self.r, **{**self.cache_options, **overrides})

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, seed=42):
        """Stream Steps. tokens: one prompt (a list of ids) or several (a list of lists)."""
        prompts = [tokens] if tokens and isinstance(tokens[0], int) else tokens
        if not prompts or not all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts):
            raise ValueError("generate: tokens must be a non-empty list of ids, or a list of such lists")
        if not (isinstance(num_samples, int) and num_samples >= 1 and isinstance(max_tokens, int) and max_tokens >= 1):
            raise ValueError(f"generate: num_samples={num_samples!r}, max_tokens={max_tokens!r}: expected ints >= 1")
        if temperature < 0:
            raise ValueError(f"generate: temperature={temperature}: expected >= 0")
        model, device = self.model, self.model.lm_head.weight.device
        rng = torch.Generator(device=device).manual_seed(seed)
        B = len(prompts) * num_samples
        cache = self._cache(B, max(len(p) for p in prompts) + max_tokens)
        logits = []
        for p, prompt in enumerate(prompts):  # one prefill per prompt, shared by its samples
            prefill = self._cache(1, len(prompt), exit_criterion=None)
            ids = torch.tensor([prompt], dtype=torch.long, device=device)
            logits.append(model(ids, r=self.r, kv_cache=prefill)[:, -1])  # (1, V)
            cache.insert(range(p * num_samples, (p + 1) * num_samples), prefill)
        logits = torch.cat(logits).repeat_interleave(num_samples, dim=0)  # (B, V)
        depths = [self.r] * B
        rows = [Reply(self.chat_tokens) for _ in range(B)]
        for step in range(max_tokens):
            sampled = sample_next_token(logits, rng, temperature, top_k).tolist()
            column, was_sampled, done = [], [], []
            for row, s in zip(rows, sampled):
                token, is_sampled = (s, True) if row.done else row.next_token(s)  # a done row's token is filler
                if not row.done and (code := row.feed(token, is_sampled)) is not None and self.tool is not None:
                    row.force(self.tokenizer.encode(self.tool(self.tokenizer.decode(code))))
                column.append(token)
                was_sampled.append(is_sampled)
                done.append(row.done)
            yield Step(column, was_sampled, depths, done)
            if all(row.done for row in rows) or step == max_tokens - 1:
                return
            ids = torch.tensor(column, dtype=torch.long, device=device)[:, None]  # (B, 1)
            logits = model(ids, r=self.r, kv_cache=cache)[:, -1]
            depths = cache.depth[:, -1].tolist()

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
