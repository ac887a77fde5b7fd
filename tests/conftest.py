"""Shared fixtures: a throwaway tokenizer trained in-process and synthetic parquet shards."""

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.dataset import iter_texts, list_parquet_files
from nanochat.tokenizer import Tokenizer

# the small public-domain corpus shipped in the repo (dev/make_sample_data.py)
SAMPLE_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev", "sample_data")


def write_shard(path, texts, row_group_size=8):
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), path, row_group_size=row_group_size)


def make_documents(n, seed=0, min_words=3, max_words=120):
    """Documents of varied length, each tagged with its id so tests can trace tokens back."""
    rng = random.Random(seed)
    words = ["the", "loop", "state", "iterates", "latent", "token", "model", "data", "shard", "rank",
             "deep", "think", "block", "again", "ünï", "码", "🤖", "42", "x", "of"]
    return [f"doc{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
            for i in range(n)]


@pytest.fixture(scope="session")
def tokenizer():
    """A 512-token BPE trained on the shipped sample corpus (a second or so)."""
    texts = [t[:20000] for t in iter_texts(list_parquet_files(SAMPLE_DATA_DIR)[:1])]
    return Tokenizer.train_from_iterator(iter(texts), 512)


@pytest.fixture
def shard_dir(tmp_path):
    """Three train shards and a val shard of synthetic documents, several row groups each."""
    docs = make_documents(200)
    for i in range(4):
        write_shard(os.path.join(tmp_path, f"shard_{i:05d}.parquet"), docs[i * 50:(i + 1) * 50])
    return str(tmp_path)


class FakeResponse:
    """Stands in for a streamed `requests` response in download tests."""

    def __init__(self, data):
        self.data, self.headers = data, {"content-length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def raise_for_status(self):
        pass

    def iter_content(self, chunk_size):
        for i in range(0, len(self.data), chunk_size):
            yield self.data[i:i + chunk_size]
