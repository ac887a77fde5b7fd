"""
POST /v1/completions: OpenAI's text completions (nanochat/openai_api.py serves it beside the chat
route), for clients that continue text (litellm.text_completion) or score it (lm-evaluation-
harness's local-completions: echo + logprobs, the way it computes loglikelihoods):

    {"model": id, "prompt": str | [str] | [int] | [[int]], "max_tokens": 16, "echo": false,
     "logprobs": null | 0..5, "temperature", "top_p", "presence_penalty", "frequency_penalty", "n",
     "stop", "seed", extensions "top_k", "recur", "adaptive"}

- A prompt of token ids is used as it is; a text prompt is encoded after a <|bos|> (the model
  was trained on documents that start with one), which the reply never shows: its first token's
  logprob is conditioned on <|bos|>, where an id prompt's first token has none (null).
- max_tokens 0 with echo scores the prompt and generates nothing.
- logprobs N: for every token shown (the prompt's with echo, then the completion's), its log
  probability under the model and the N most likely tokens at that position with theirs
  ({token text: logprob}, a piece of a character named "bytes:\\xNN..."), computed by one forward
  over prompt + completion at the request's recur (and adaptive exit, if asked): the model's own
  distribution, before temperature, top_k and top_p. A completion that ended at the model's end
  token lists that token last, as OpenAI lists "<|endoftext|>".
- Choices are ordered prompt by prompt, n each. stream is not supported here (400).
"""

import asyncio
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanochat.chat_api import ChatRequest, RequestError, sampling_fields
from nanochat.eval_forward import scoring_forward

MAX_PROMPTS = 32
MAX_LOGPROBS = 5          # as OpenAI's completions
MAX_TOKENS_RANGE = (0, 4096)
DEFAULT_MAX_TOKENS = 16   # OpenAI's default for completions
KNOWN = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "echo", "logprobs",
         "stream", "recur", "adaptive", "presence_penalty", "frequency_penalty")
NEUTRAL = {"suffix": (), "best_of": (1,), "logit_bias": ({},), "stream": (False,), "stream_options": ()}


@dataclass
class Job:
    prompts: list         # token ids per prompt, as the model reads them
    shown: list           # per prompt: how many leading ids the reply does not show (1 = our <|bos|>)
    req: ChatRequest      # sampling, n, recur, adaptive (messages unused)
    echo: bool
    logprobs: int | None
    stops: list


def parse(body, defaults, tokenizer, model, options):
    """The parsed JSON (already checked for model and neutral fields by the caller) -> Job; 400
    (context_length_exceeded) for a prompt and max_tokens past the model's positions. options:
    openai_api's parser of n and stop, shared with the chat route."""
    vocab_size = model.config.vocab_size
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
        prompt = [prompt]
    if not (isinstance(prompt, list) and 0 < len(prompt) <= MAX_PROMPTS):
        raise RequestError(400, "prompt", f"expected a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} "
                                          f"of either")
    prompts, hidden = [], []
    for i, p in enumerate(prompt):
        if isinstance(p, str) and p:
            prompts.append([tokenizer.get_bos_token_id()] + tokenizer.encode(p))
            hidden.append(1)
        elif (isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size
                                                for t in p)):
            prompts.append(list(p))
            hidden.append(0)
        else:
            raise RequestError(400, f"prompt[{i}]", f"expected a non-empty string or a non-empty list of token ids "
                                                    f"in [0, {vocab_size})")
    given = {k: v for k, v in body.items() if v is not None}
    native = {k: given[k] for k in ("temperature", "top_k", "top_p", "recur", "adaptive", "seed", "max_tokens",
                                    "presence_penalty", "frequency_penalty") if k in given}
    fields = sampling_fields(native, {**defaults, "max_tokens": DEFAULT_MAX_TOKENS}, MAX_TOKENS_RANGE)
    echo = given.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError(400, "echo", "expected true or false")
    if fields["max_tokens"] == 0 and not echo:
        raise RequestError(400, "max_tokens", "0 only with echo: true (scoring the prompt)")
    logprobs = given.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):
        raise RequestError(400, "logprobs", f"expected null or an integer in [0, {MAX_LOGPROBS}]")
    n, stops = options(given)
    req = ChatRequest(messages=[], n=n, **fields)
    if model.config.arch == "gpt":  # no loop: recur 1, as render_prompt does for chat
        if req.adaptive is not None:
            raise RequestError(400, "adaptive", "this model (arch 'gpt') has no loop to exit early from")
        req.recur = 1
    for i, ids in enumerate(prompts):
        if len(ids) + req.max_tokens > model.rotary_len:
            raise RequestError(413, f"prompt[{i}]", f"{len(ids)} tokens; with max_tokens={req.max_tokens} that exceeds "
                                                    f"the model's {model.rotary_len} positions")
    return Job(prompts, hidden, req, echo, logprobs, stops)


async def generated(pool, ids, req):
    """Per row of the request: (token ids incl. a final end token, depths, stopped at an end token)."""
    rows = [([], [], False) for _ in range(req.n)]
    if req.max_tokens == 0:
        return rows
    finished = [False] * req.n
    steps = pool.generate(ids, req)
    try:
        async for step in steps:
            for i in range(req.n):
                if finished[i]:
                    continue
                rows[i][0].append(step.tokens[i])
                rows[i][1].append(step.depths[i])
                if step.done[i]:
                    finished[i] = True
                    rows[i] = (rows[i][0], rows[i][1], True)
            if all(finished):
                break
    finally:
        await steps.aclose()
    return rows


def score(model, ids, r, adaptive, top):
    """(logprob of each token given the ones before it (None for the first), top-`top` dicts as
    {id: logprob} (None for the first)) for one row, by one forward."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits, _ = scoring_forward(model, torch.tensor([ids], device=device), r=r,
                                    exit_threshold=-1.0 if adaptive is None else adaptive)
        logp = F.log_softmax(logits[0, :-1].float(), dim=-1)
        chosen = logp.gather(1, torch.tensor(ids[1:], device=device).unsqueeze(1)).squeeze(1).tolist()
        tops = [{} for _ in chosen]
        if top:
            values, indices = logp.topk(top, dim=-1)
            tops = [dict(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    return [None] + chosen, [None] + tops


def cut_at_stops(text, stops):
    hits = [p for p in (text.find(s) for s in stops) if p >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


async def respond(pool, model, tokenizer, job, head, scoring_lock):
    """The whole response for a parsed Job."""
    rows = await asyncio.gather(*(generated(pool, ids, job.req) for ids in job.prompts))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p, (ids, hidden, outs) in enumerate(zip(job.prompts, job.shown, rows)):
        prompt_tokens += len(ids)
        for j, (new, depths, ended) in enumerate(outs):
            kept = new[:-1] if ended else new  # the end token is not text
            text, stopped = cut_at_stops(tokenizer.decode(kept), job.stops)
            if stopped:  # keep the tokens whose text starts before the cut
                k = sum(start < len(text) for start in tokenizer.token_offsets(kept))
                kept, new, depths = kept[:k], kept[:k], depths[:k]
            completion_tokens += len(kept)
            shown_prompt = ids[hidden:] if job.echo else []
            choice = {"index": p * job.req.n + j, "text": (tokenizer.decode(shown_prompt) if job.echo else "") + text,
                      "finish_reason": "stop" if ended or stopped else "length", "logprobs": None,
                      "depths": depths[:len(kept)]}
            if job.logprobs is not None:
                async with scoring_lock:  # one scoring forward at a time: its logits are (T, vocab) floats
                    lps, tops = await asyncio.to_thread(score, model, ids + new, job.req.recur, job.req.adaptive,
                                                        job.logprobs)
                start = hidden if job.echo else len(ids)
                tokens = (ids + new)[start:]
                choice["logprobs"] = {
                    "tokens": [tokenizer.token_text(t) for t in tokens], "token_logprobs": lps[start:],
                    "text_offset": tokenizer.token_offsets(tokens),
                    "top_logprobs": [None if top is None else {tokenizer.token_text(t): v for t, v in top.items()}
                                     for top in tops[start:]]}
            choices.append(choice)
    return {**head, "object": "text_completion", "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
