"""
Build dev/sample_data/: the small public-domain corpus shipped in the repo, so the toy
pipeline runs on a fresh clone with no network. It holds the US inaugural and State of the
Union addresses (US government works, public domain) taken from the NLTK-derived shards in
../shared/data/pretrain (see its README for provenance).

    python dev/make_sample_data.py --src ../shared/data/pretrain

The last shard is validation, as everywhere in nanochat.
"""

import argparse
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

CIVIC_WORDS = ("America", "Congress", "citizens", "Government", "government", "nation", "Nation", "Union", "Constitution")


def is_address(text):
    # Whole addresses are > 4000 chars (the other corpora in the source were packed below that),
    # movie reviews are lower-cased, and ABC news items (not public domain) speak of Australia
    # or the ABC and use civic words far less often than a presidential address does.
    if len(text) <= 4000 or not any(c.isupper() for c in text[:200]):
        return False
    if "Australia" in text or "ABC" in text or "signal processing" in text:
        return False
    return sum(text.count(w) for w in CIVIC_WORDS) >= 9


def chunks(text, max_chars):
    """Split an address at line ends into pieces of at most ~max_chars, so a toy model with a
    short context sees whole documents instead of the first row of each long speech."""
    piece, out = "", []
    for line in text.split("\n"):
        if piece and len(piece) + len(line) + 1 > max_chars:
            out.append(piece.strip())
            piece = ""
        piece += line + "\n"
    if piece.strip():
        out.append(piece.strip())
    return [p for p in out if len(p) >= 200]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default="../shared/data/pretrain", help="folder of source parquet shards")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sample_data"), help="output folder")
    parser.add_argument("--val-docs", type=int, default=12, help="addresses in the validation shard")
    parser.add_argument("--max-chars", type=int, default=1500, help="longest document after splitting an address")
    args = parser.parse_args()
    docs = []
    for name in sorted(os.listdir(args.src)):
        if name.endswith(".parquet"):
            docs += [t for t in pq.read_table(os.path.join(args.src, name)).column("text").to_pylist() if is_address(t)]
    random.Random(1337).shuffle(docs)
    os.makedirs(args.out, exist_ok=True)
    split = lambda addresses: [c for a in addresses for c in chunks(a, args.max_chars)]
    splits = {"shard_00000.parquet": split(docs[args.val_docs:]), "shard_00001.parquet": split(docs[:args.val_docs])}
    for name, texts in splits.items():
        table = pa.table({"text": pa.array(texts, type=pa.string())})
        pq.write_table(table, os.path.join(args.out, name), row_group_size=256, compression="zstd")
        print(f"{name}: {len(texts)} docs, {sum(map(len, texts)):,} chars")


if __name__ == "__main__":
    main()
