"""
The installed command: `nanochat <command> [flags]` runs a script of scripts/ from any
directory, with the script's own flags (`nanochat serve --help`). `python -m scripts.X` works as
before; multi-GPU training stays `torchrun ... -m scripts.base_train`.

    nanochat serve --source sft --port 8000      # = python -m scripts.chat_web ...
    nanochat chat -p "Why is the sky blue?"      # = python -m scripts.chat_cli ...
"""

import runpy
import sys

COMMANDS = {  # command: (module, what it does)
    "tok-train": ("scripts.tok_train", "train the tokenizer"),
    "tok-eval": ("scripts.tok_eval", "tokenizer compression"),
    "train": ("scripts.base_train", "pretrain a base model"),
    "eval": ("scripts.base_eval", "CORE and bits per byte of a base model, at several r"),
    "sft": ("scripts.chat_sft", "supervised fine-tuning into a chat model"),
    "rl": ("scripts.chat_rl", "reinforcement learning on GSM8K"),
    "chat-eval": ("scripts.chat_eval", "the chat tasks (ARC, MMLU, GSM8K, HumanEval, ...)"),
    "depth-eval": ("scripts.depth_eval", "accuracy by problem depth x r (pointer chasing, variable chasing)"),
    "chat": ("scripts.chat_cli", "talk to a model in the terminal"),
    "serve": ("scripts.chat_web", "the web chat and the OpenAI-compatible API"),
    "export": ("scripts.export_hf", "write a checkpoint as a Hugging Face folder"),
}


def usage():
    width = max(map(len, COMMANDS))
    return ("usage: nanochat <command> [flags]   (nanochat <command> --help: the command's flags)\n\ncommands:\n"
            + "\n".join(f"  {name:<{width}}  {what}  (python -m {module})" for name, (module, what) in COMMANDS.items()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}: expected one of {', '.join(COMMANDS)} (nanochat --help)",
              file=sys.stderr)
        return 2
    module = COMMANDS[argv[0]][0]
    sys.argv = [f"nanochat {argv[0]}", *argv[1:]]  # the script parses sys.argv (runpy sets [0] to its file)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
