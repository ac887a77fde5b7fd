import collections
import os

import pytest

from nanochat.dataloader import DataLoader
from nanochat.dataset import list_parquet_files, split_files, verify_shard
from tests.conftest import make_documents, write_shard


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def doc_ids_in(loader, tokenizer, batches):
    """Count, per document id, how often its head 'docN ' appears right after a BOS
    (a document cropped before its id is complete is not counted)."""
    counts = collections.Counter()
    bos = tokenizer.get_bos_token_id()
    for x, y in batches:
        rows = x.tolist()
        for row in rows:
            starts = [i for i, t in enumerate(row) if t == bos]
            for s in starts:
                text = tokenizer.decode(row[s + 1:s + 8])
                if " " in text:
                    counts[text.split(" ")[0]] += 1
    return counts


def test_rows_start_with_bos_and_targets_shift(tokenizer, shard_dir):
    loader = DataLoader(tokenizer, shard_dir, "train", B=4, T=64, buffer_docs=16)
    for x, y in take(loader, 10):
        assert x.shape == (4, 64) and y.shape == (4, 64)
        assert (x[:, 0] == tokenizer.get_bos_token_id()).all()
        assert (x[:, 1:] == y[:, :-1]).all()


def test_each_document_at_most_once_per_epoch(tokenizer, shard_dir):
    # 150 train docs; read fewer tokens than one epoch holds
    loader = DataLoader(tokenizer, shard_dir, "train", B=2, T=128, buffer_docs=8)
    batches = []
    while loader.epoch == 0:
        batches.append(loader.next_batch())
    batches.pop()  # the last batch may already reach into epoch 1
    counts = doc_ids_in(loader, tokenizer, batches)
    assert counts and max(counts.values()) == 1, counts.most_common(3)
    assert 0 <= loader.waste < 0.5
    print(f"packing waste at T=128 on synthetic docs: {loader.waste:.1%}")


def test_resume_gives_identical_next_batches(tokenizer, shard_dir):
    a = DataLoader(tokenizer, shard_dir, "train", B=3, T=48, buffer_docs=10)
    take(a, 7)
    state = a.state_dict()
    expected = take(a, 12)  # crosses an epoch boundary on this small dataset
    b = DataLoader(tokenizer, shard_dir, "train", B=3, T=48, buffer_docs=10, state=state)
    for (x1, y1), (x2, y2) in zip(expected, take(b, 12)):
        assert (x1 == x2).all() and (y1 == y2).all()


def test_two_ranks_see_disjoint_documents(tokenizer, shard_dir):
    seen = []
    for rank in range(2):
        loader = DataLoader(tokenizer, shard_dir, "train", B=2, T=256, rank=rank, world_size=2, buffer_docs=4)
        batches = []
        while loader.epoch == 0:
            batches.append(loader.next_batch())
        seen.append(set(doc_ids_in(loader, tokenizer, batches[:-1])))
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1]


def test_resume_state_checks_rank(tokenizer, shard_dir):
    a = DataLoader(tokenizer, shard_dir, "train", B=1, T=32, rank=0, world_size=2, buffer_docs=4)
    with pytest.raises(ValueError, match="rank"):
        DataLoader(tokenizer, shard_dir, "train", B=1, T=32, rank=1, world_size=2, state=a.state_dict())


def test_val_split_is_last_shard(shard_dir):
    files = list_parquet_files(shard_dir)
    assert split_files(shard_dir, "val") == files[-1:]
    assert split_files(shard_dir, "train") == files[:-1]
    with pytest.raises(ValueError, match="split"):
        split_files(shard_dir, "test")


def test_truncated_parquet_names_the_file(tokenizer, tmp_path):
    docs = make_documents(40)
    for i in range(2):
        write_shard(os.path.join(tmp_path, f"shard_{i:05d}.parquet"), docs)
    bad = os.path.join(tmp_path, "shard_00000.parquet")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard_00000.parquet"):
        verify_shard(bad)
    with pytest.raises(ValueError, match="shard_00000.parquet"):
        DataLoader(tokenizer, str(tmp_path), "train", B=1, T=32).next_batch()


def test_missing_data_dir_is_clear(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DataLoader(tokenizer, str(tmp_path / "nope"), "train", B=1, T=32)
