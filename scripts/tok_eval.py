"""
Tokenizer compression: bytes per token on held-out text (the validation shard) and on a few
kinds of text, against the other tokenizers available offline (tiktoken's GPT-2 and GPT-4
encodings when they are cached; they are downloaded once when online).

    python -m scripts.tok_eval --data-dir ../shared/data/pretrain
"""

import argparse

from nanochat import errors
from nanochat.common import print0
from nanochat.dataset import default_data_dir, iter_texts, split_files
from nanochat.report import get_report
from nanochat.tokenizer import get_tokenizer

errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback

parser = argparse.ArgumentParser(description="Evaluate tokenizer compression (bytes/token)")
parser.add_argument("--data-dir", type=str, default=None, help="folder of parquet shards; the last (val) shard is used")
parser.add_argument("--max-chars", type=int, default=5_000_000, help="characters of validation text to encode")
parser.add_argument("--tokenizer-dir", type=str, default=None, help="tokenizer folder (default $NANOCHAT_BASE_DIR/tokenizer)")
args = parser.parse_args()

SAMPLES = {
    "code": 'def fib(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fib(i) for i in range(10)])\n',
    "math": "Let x^2 + 3x - 10 = 0. Then (x + 5)(x - 2) = 0, so x = -5 or x = 2. Check: 25 - 15 - 10 = 0 and 4 + 6 - 10 = 0.",
    "prose": "The committee met on Tuesday to consider the proposal. After a long discussion, the members agreed that the plan was sound, though several raised concerns about its cost.",
    "multilingual": "Bonjour le monde. Hallo Welt. こんにちは世界。 안녕하세요 세계. Привет, мир. 你好，世界。",
}


def load_val_text():
    chunks, n = [], 0
    for text in iter_texts(split_files(args.data_dir or default_data_dir(), "val")):
        chunks.append(text)
        n += len(text)
        if n >= args.max_chars:
            break
    return "\n".join(chunks)[:args.max_chars]


def others():
    """tiktoken's reference encodings, if they are in its cache (no network needed then)."""
    import tiktoken
    found = {}
    for name in ("gpt2", "cl100k_base"):
        try:
            found[name] = tiktoken.get_encoding(name)
        except Exception as e:  # tiktoken raises several kinds (requests, ValueError) when offline
            print0(f"({name} not available offline: {type(e).__name__})")
    return found


texts = {"val shard": load_val_text(), **SAMPLES}
ours = get_tokenizer(args.tokenizer_dir)
encoders = {f"ours ({ours.get_vocab_size()})": ours.encode}
encoders.update({f"{name} ({enc.n_vocab})": enc.encode_ordinary for name, enc in others().items()})

header = f"{'text':<14}{'bytes':>12}" + "".join(f"{name:>22}" for name in encoders)
print0("bytes per token (higher = better compression)")
print0(header)
table = ["| text | bytes | " + " | ".join(encoders) + " |", "|---|---|" + "---|" * len(encoders)]
for label, text in texts.items():
    nbytes = len(text.encode("utf-8"))
    ratios = [nbytes / len(encode(text)) for encode in encoders.values()]
    print0(f"{label:<14}{nbytes:>12,}" + "".join(f"{v:>22.3f}" for v in ratios))
    table.append(f"| {label} | {nbytes:,} | " + " | ".join(f"{v:.3f}" for v in ratios) + " |")

get_report().log(section="Tokenizer evaluation",
                 data=[vars(args), "Bytes per token (higher = better compression):\n\n" + "\n".join(table)])
