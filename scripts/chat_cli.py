"""
Talk to a model in the terminal.

    python -m scripts.chat_cli                                   # interactive, latest SFT model
    python -m scripts.chat_cli -p "Why is the sky blue?"         # one question, one answer
    python -m scripts.chat_cli --source base --model-tag s20 --recur 8 --adaptive 0.3
    python -m scripts.chat_cli --source ~/.cache/nanochat/hf/sft_s20   # a folder from scripts/export_hf.py

Interactive commands: 'quit' or 'exit' leaves, 'clear' starts a new conversation. The reply
streams token by token; python tool calls run in the sandbox and show as a [python] block
followed by its [output] block (in colour on a terminal, unless NO_COLOR is set).
"""

import argparse
import os
import sys

import torch

from nanochat import errors
from nanochat.checkpoint_manager import load_model
from nanochat.common import compute_init
from nanochat.engine import Engine
from nanochat.execution import describe_sandbox
from nanochat.kv_cache import DEFAULT_EXIT_CRITERION, EXIT_CRITERIA
from nanochat.recurrence import resolve_r
from nanochat.reply import ReplyDecoder, TerminalReply

parser = argparse.ArgumentParser(description="Chat with a model")
parser.add_argument("--source", type=str, default="sft",
                    help="which stage's checkpoints: base | sft | rl, or a folder written by scripts/export_hf.py")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = the latest)")
parser.add_argument("-p", "--prompt", type=str, default="", help="ask this once, print the reply and exit")
parser.add_argument("--recur", type=int, default=-1,
                    help="loop iterations per token; the cap with --adaptive (-1 = the checkpoint's eval r)")
parser.add_argument("--adaptive", type=float, default=-1, help="adaptive exit threshold, e.g. 0.3 for state and state+kl "
                                                                  "or 1e-3 for kl (-1 = off, fixed r)")
parser.add_argument("--exit-criterion", type=str, default=DEFAULT_EXIT_CRITERION, choices=EXIT_CRITERIA,
                    help="adaptive exit criterion: state (relative change of the recurrent state, free), kl (runs the "
                         "coda and head at every iteration) or state+kl (either; KL every other iteration)")
parser.add_argument("--cache-mode", type=str, default="exact", choices=["exact", "shared"],
                    help="KV cache per iteration (exact) or per physical block (shared, Huginn)")
parser.add_argument("--warm-start", type=int, default=0, choices=[0, 1],
                    help="start each token from the previous token's final state")
parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (-1 = all)")
parser.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per reply")
parser.add_argument("--seed", type=int, default=42, help="sampling seed")
parser.add_argument("--device-type", type=str, default="", help="cuda | cpu | mps (empty = autodetect)")
args = parser.parse_args()
errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

_, _, _, _, device = compute_init(args.device_type or None, seed=args.seed)
with errors.user_input():  # a missing checkpoint or a bad flag: one line and exit code 2
    model, tokenizer, meta = load_model(args.source, args.model_tag or None, None if args.step < 0 else args.step, device)
    r = resolve_r(model.config.arch, meta, args.recur)
    engine = Engine(model, tokenizer, r=r, cache_mode=args.cache_mode, warm_start=bool(args.warm_start),
                    exit_criterion=args.exit_criterion if args.adaptive >= 0 else None,
                    exit_threshold=max(args.adaptive, 0.0))
print(describe_sandbox())
print(f"model: {args.source} step {meta['step']} ({model.config.arch}, width {model.config.n_embd}), r={engine.r}"
      + (f", adaptive {args.exit_criterion} < {args.adaptive:g}" if args.adaptive >= 0 else "") + f", {args.cache_mode} cache")

def reply(prompt):
    """Stream the assistant's reply to stdout, tool calls as [python] / [output] blocks; returns
    its parts (render_conversation's schema, so the next turn renders it as it was written)."""
    depths = []
    decoder, terminal = ReplyDecoder(tokenizer), TerminalReply(color=sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    for step in engine.generate(prompt, max_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k if args.top_k > 0 else None, seed=args.seed):
        if step.done[0]:
            break
        depths.append(step.depths[0])
        print("".join(terminal.show(kind, text) for kind, text, _ in decoder.feed(step.tokens[0])), end="", flush=True)
    print("".join(terminal.show(kind, text) for kind, text, _ in decoder.finish()) + terminal.end(), end="")
    if args.adaptive >= 0 and depths:
        print(f"[{len(depths)} tokens, mean depth {sum(depths) / len(depths):.2f} of {engine.r}]")
    return decoder.parts


def render(messages):
    """The prompt ids for the next reply: the tokenizer's one chat format (as the server's)."""
    return tokenizer.render_for_completion({"messages": messages + [{"role": "assistant", "content": ""}]})


messages = []
with torch.inference_mode():
    while True:
        if args.prompt:
            question = args.prompt
        else:
            try:
                question = input("\nUser: ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                break
            if question in ("quit", "exit"):
                break
            if question == "clear":
                messages = []
                continue
            if not question:
                continue
        turn = [{"role": "user", "content": question}]
        alone = len(render(turn))
        if alone + args.max_new_tokens > model.rotary_len:  # too long even on its own
            print(f"error: this question is {alone} tokens; with --max-new-tokens {args.max_new_tokens} it exceeds the "
                  f"model's {model.rotary_len} positions: ask a shorter one or lower --max-new-tokens", file=sys.stderr)
            if args.prompt:
                sys.exit(2)
            continue
        if len(render(messages + turn)) + args.max_new_tokens > model.rotary_len:
            print(f"(the conversation reached the model's {model.rotary_len} positions: starting over)", file=sys.stderr)
            messages = []
        messages += turn
        print("\nAssistant: ", end="", flush=True)
        messages.append({"role": "assistant", "content": reply(render(messages))})
        if args.prompt:
            break
