"""
Pretraining data: a directory of parquet shards, each with a string column `text`, one
document per row. The files sort by name; the last one is the validation split.

Online, `python -m nanochat.dataset -n 8` downloads the shards nanochat trains on
(FineWeb-Edu 100B, reshuffled and repackaged by Karpathy) in parallel, with retries,
resuming where it left off. Every shard is written to a temporary name, verified (the
server's SHA-256 when it sends one, and a full parquet read), and only then renamed into
place, so a partial or corrupt file is never used. Offline, point `--data-dir` at any folder
of shards (e.g. ../shared/data/pretrain or dev/sample_data).
"""

import argparse
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from nanochat.common import get_base_dir

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # shards 0..1822 exist; the last one serves as validation
SAMPLE_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev", "sample_data")


def default_data_dir():
    return os.path.join(get_base_dir(), "base_data")


def shard_name(index):
    return f"shard_{index:05d}.parquet"


# -----------------------------------------------------------------------------
# reading

def list_parquet_files(data_dir):
    """Sorted parquet paths in data_dir; a clear error when there are none."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir} does not exist: download shards "
                                f"(python -m nanochat.dataset -n 8) or pass --data-dir")
    files = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"no .parquet shards in {data_dir}")
    return files


def split_files(data_dir, split):
    """Train = every shard but the last; val = the last shard."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: expected 'train' or 'val'")
    files = list_parquet_files(data_dir)
    if len(files) < 2:
        raise ValueError(f"{data_dir} holds {len(files)} shard; need at least 2 (the last is validation)")
    return files[:-1] if split == "train" else files[-1:]


def open_shard(path):
    """A ParquetFile with a `text` column, or a ValueError naming the broken file."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise ValueError(f"corrupt or truncated parquet shard {path}: {e}") from e
    if "text" not in pf.schema_arrow.names:
        raise ValueError(f"parquet shard {path} has no 'text' column (columns: {pf.schema_arrow.names})")
    return pf


def read_row_group(pf, path, index):
    try:
        return pf.read_row_group(index, columns=["text"]).column("text").to_pylist()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise ValueError(f"corrupt parquet shard {path} (row group {index}): {e}") from e


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

def download_shard(index, data_dir, retries=5, timeout=60):
    """Fetch one shard atomically; skip it if a verified copy is already there."""
    import requests
    path = os.path.join(data_dir, shard_name(index))
    if os.path.exists(path):
        try:
            verify_shard(path)
            return path
        except ValueError:
            print(f"re-fetching damaged {path}")
            os.remove(path)
    url = f"{BASE_URL}/{shard_name(index)}"
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
            if attempt == retries:
                raise RuntimeError(f"failed to download {url} after {retries} attempts: {e}") from e
            wait = 2 ** attempt
            print(f"download of {shard_name(index)} failed ({e}); retry {attempt}/{retries - 1} in {wait}s")
            time.sleep(wait)


def download(num_shards, data_dir, workers=8):
    """Download the first num_shards train shards plus the validation shard, with progress."""
    os.makedirs(data_dir, exist_ok=True)
    indices = list(range(min(num_shards, MAX_SHARD))) + [MAX_SHARD]
    t0, done = time.time(), 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda i: download_shard(i, data_dir), indices):
            done += 1
            elapsed = time.time() - t0
            eta = elapsed / done * (len(indices) - done)
            print(f"\rshards {done}/{len(indices)} | {elapsed:.0f}s elapsed | eta {eta:.0f}s", end="", flush=True)
    print(f"\n{len(indices)} shards ready in {data_dir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Download pretraining shards (FineWeb-Edu 100B)")
    parser.add_argument("-n", "--num-shards", type=int, default=8, help="train shards to fetch (the val shard comes too)")
    parser.add_argument("-w", "--workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--data-dir", type=str, default=None, help="target folder (default $NANOCHAT_BASE_DIR/base_data)")
    args = parser.parse_args()
    download(args.num_shards, args.data_dir or default_data_dir(), args.workers)
