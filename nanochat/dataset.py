"""
Pretraining data: a directory of parquet shards, each with a string column `text`, one
document per row. The files sort by name; the last one is the validation split.

Online, `python -m nanochat.dataset -n 8` downloads shards of one of two sources (SOURCES):
ClimbMix (the default, what nanochat master trains on since its leaderboard entry 4) or
FineWeb-Edu 100B (its earlier default), both reshuffled and repackaged by Karpathy on the
Hugging Face Hub. Each source downloads into its own folder, base_data/<name>, marked by a
data_source.json note, so the two never mix. Shards are fetched in parallel, with retries,
resuming where a previous run stopped; each is written to a temporary name, verified (the
Hub's SHA-256 when it sends one, and a full parquet read), and only then renamed into place,
so a partial or corrupt file is never used. Offline, point `--data-dir` at any folder of
shards (e.g. ../shared/data/pretrain or dev/sample_data).
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat.common import Progress, get_base_dir
from nanochat.errors import MissingInput, UserError, run, short


@dataclass(frozen=True)
class Source:
    name: str
    repo: str              # the Hugging Face dataset
    last_shard: int        # shards 0..last_shard exist; the last one is the validation shard
    tokens_per_shard: int  # estimate, see SOURCES

    def url(self, index):
        return f"https://huggingface.co/datasets/{self.repo}/resolve/main/{shard_name(index)}"


# tokens_per_shard: the token count in each repo's name over its shard count (400B / 6543 and
# 100B / 1823), counted with the tokenizers those corpora were measured with, not ours: an
# estimate, hence the margin in shards_for_tokens. runs/common.sh repeats these numbers (a test
# keeps the two equal).
SOURCES = {
    "climbmix": Source("climbmix", "karpathy/climbmix-400b-shuffle", 6542, 61_000_000),
    "fineweb-edu": Source("fineweb-edu", "karpathy/fineweb-edu-100b-shuffle", 1822, 55_000_000),
}
DEFAULT_DATASET = "climbmix"
SHARD_MARGIN = 1.2  # download 20% more shards than the estimate says a run reads
NOTE = "data_source.json"


def get_source(name):
    if name not in SOURCES:
        raise ValueError(f"dataset {name!r}: expected one of {', '.join(SOURCES)}")
    return SOURCES[name]


def default_data_dir(dataset=DEFAULT_DATASET):
    return os.path.join(get_base_dir(), "base_data", get_source(dataset).name)


def shard_name(index):
    return f"shard_{index:05d}.parquet"


def shards_for_tokens(tokens, dataset=DEFAULT_DATASET):
    """Train shards a run of `tokens` tokens reads, with SHARD_MARGIN, at most all of them."""
    source = get_source(dataset)
    return min(source.last_shard, math.ceil(tokens * SHARD_MARGIN / source.tokens_per_shard))


def read_data_source(data_dir):
    """Which corpus a folder holds: its data_source.json (written by download), or only its path."""
    path = os.path.join(data_dir, NOTE)
    if os.path.exists(path):
        with open(path) as f:
            return {**json.load(f), "dir": os.path.abspath(data_dir)}
    return {"dataset": None, "repo": None, "dir": os.path.abspath(data_dir)}


def data_plan(data_dir, tokens):
    """The data a run of `tokens` tokens reads, for logs and checkpoint metadata."""
    info = read_data_source(data_dir)
    present = len([f for f in os.listdir(data_dir) if f.endswith(".parquet")]) - 1 if os.path.isdir(data_dir) else 0
    needed = shards_for_tokens(tokens, info["dataset"]) if info["dataset"] in SOURCES else None
    return {**info, "train_tokens": tokens, "train_shards_needed": needed, "train_shards_present": max(present, 0)}


# -----------------------------------------------------------------------------
# reading

REPLACE = "delete or replace it (python -m nanochat.dataset fetches a downloaded shard again)"


def list_parquet_files(data_dir):
    """Sorted parquet paths in data_dir; a clear error when there are none."""
    fix = "point --data-dir at a folder of parquet shards, or download some (python -m nanochat.dataset -n 8)"
    if not os.path.isdir(data_dir):
        raise MissingInput(f"data folder {data_dir} does not exist: {fix}")
    files = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.endswith(".parquet"))
    if not files:
        raise MissingInput(f"no .parquet shards in {data_dir}: {fix}")
    return files


def split_files(data_dir, split):
    """Train = every shard but the last; val = the last shard."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: expected 'train' or 'val'")
    files = list_parquet_files(data_dir)
    if len(files) < 2:
        raise UserError(f"{data_dir} holds {len(files)} shard; need at least 2 (the last is validation): add a shard")
    return files[:-1] if split == "train" else files[-1:]


def open_shard(path):
    """A ParquetFile with a `text` column, or a UserError naming the broken file."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise UserError(f"corrupt or truncated parquet shard {path} ({short(e)}): {REPLACE}") from e
    if "text" not in pf.schema_arrow.names:
        raise UserError(f"parquet shard {path} has no 'text' column (columns: {pf.schema_arrow.names}): "
                        f"every shard needs one string column 'text'")
    return pf


def read_row_group(pf, path, index):
    try:
        return pf.read_row_group(index, columns=["text"]).column("text").to_pylist()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise UserError(f"corrupt parquet shard {path} (row group {index}, {short(e)}): {REPLACE}") from e


def iter_texts(files):
    """Documents of the given shards in order (used by the tokenizer trainer)."""
    for path in files:
        pf = open_shard(path)
        for rg in range(pf.num_row_groups):
            yield from read_row_group(pf, path, rg)


def verify_shard(path):
    """Read the whole shard: raises ValueError if any part of it is damaged."""
    pf = open_shard(path)
    for rg in range(pf.num_row_groups):
        read_row_group(pf, path, rg)
    return pf.metadata.num_rows


# -----------------------------------------------------------------------------
# downloading

def claim_dir(data_dir, source):
    """Mark data_dir as holding `source`; refuse a folder that holds another source's shards
    (or shards of unknown origin), since the shard names are the same in every source."""
    os.makedirs(data_dir, exist_ok=True)
    held = read_data_source(data_dir)["dataset"]
    if held is None and any(f.endswith(".parquet") for f in os.listdir(data_dir)):
        raise ValueError(f"{data_dir} holds parquet shards of unknown source (no {NOTE}): download {source.name} "
                         f"into an empty folder (default {default_data_dir(source.name)})")
    if held not in (None, source.name):
        raise ValueError(f"{data_dir} holds {held} shards: download {source.name} into its own folder "
                         f"(default {default_data_dir(source.name)})")
    if held is None:
        tmp = os.path.join(data_dir, NOTE + ".part")
        with open(tmp, "w") as f:
            json.dump({"dataset": source.name, "repo": source.repo}, f)
        os.replace(tmp, os.path.join(data_dir, NOTE))


def download_shard(source, index, data_dir, retries=5, timeout=60, offline_retries=True):
    """Fetch one shard atomically; skip it if a verified copy is already there. With
    offline_retries=False a host that cannot be reached is a UserError at once, not retried."""
    import requests
    path = os.path.join(data_dir, shard_name(index))
    if os.path.exists(path):
        try:
            verify_shard(path)
            return path
        except ValueError:
            print(f"re-fetching damaged {path}")
            os.remove(path)
    url = source.url(index)
    tmp = path + ".part"
    for attempt in range(1, retries + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout) as resp:
                resp.raise_for_status()
                # the Hub sends the LFS object's SHA-256 as X-Linked-ETag
                expected = resp.headers.get("X-Linked-ETag", "").strip('"')
                digest = hashlib.sha256()
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        digest.update(chunk)
            if len(expected) == 64 and digest.hexdigest() != expected:
                raise ValueError(f"sha256 mismatch for {url}: got {digest.hexdigest()}, expected {expected}")
            verify_shard(tmp)
            os.replace(tmp, path)
            return path
        except (requests.RequestException, ValueError, OSError) as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            if not offline_retries and isinstance(e, (requests.ConnectionError, requests.Timeout)):
                host = url.split("/")[2]
                raise UserError(f"cannot reach {host} ({type(e).__name__}): check the network (or HTTPS_PROXY); offline, "
                                f"train on local shards: --data-dir DIR (e.g. ../shared/data/pretrain)") from e
            if attempt == retries:
                raise RuntimeError(f"failed to download {url} after {retries} attempts: {e}") from e
            wait = 2 ** attempt
            print(f"download of {shard_name(index)} failed ({e}); retry {attempt}/{retries - 1} in {wait}s")
            time.sleep(wait)


def download(num_shards, data_dir=None, workers=8, dataset=DEFAULT_DATASET, retries=5):
    """Download the first num_shards train shards of `dataset` plus its validation shard, with progress."""
    source = get_source(dataset)
    data_dir = data_dir or default_data_dir(source.name)
    claim_dir(data_dir, source)
    indices = list(range(min(num_shards, source.last_shard))) + [source.last_shard]
    progress = Progress(len(indices), "shards", every=5.0, log=print)
    # the validation shard first and alone: offline, that is one line, not a retry storm from every worker
    download_shard(source, indices.pop(), data_dir, retries, offline_retries=False)
    progress.update()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda i: download_shard(source, i, data_dir, retries), indices):
            progress.update()
    print(f"{progress.total} {source.name} shards ready in {data_dir}")
    return data_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Download pretraining shards (ClimbMix or FineWeb-Edu)")
    parser.add_argument("--dataset", type=str, default=DEFAULT_DATASET, choices=list(SOURCES), help="which corpus")
    parser.add_argument("-n", "--num-shards", type=int, default=8, help="train shards to fetch (the val shard comes too)")
    parser.add_argument("-w", "--workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--data-dir", type=str, default=None, help="target folder (default $NANOCHAT_BASE_DIR/base_data/<dataset>)")
    args = parser.parse_args()
    try:
        run(download, args.num_shards, args.data_dir, args.workers, args.dataset)
    except RuntimeError as e:  # retries used up: the network, not our code
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
