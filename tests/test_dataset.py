"""Pretraining shard download with fake HTTP responses: names, URLs, the validation shard,
resume, corrupt shards refused, each source in its own folder, the shard-count helper."""

import hashlib
import io
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from nanochat import dataset
from nanochat.dataset import SOURCES, data_plan, default_data_dir, download, list_parquet_files, shards_for_tokens
from nanochat.errors import UserError
from tests.conftest import FakeResponse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parquet_bytes(texts):
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), buf)
    return buf.getvalue()


class FakeHub:
    """Serves a small parquet file for every shard URL (with the Hub's SHA-256 header) and logs the URLs."""

    def __init__(self, bad=()):
        self.urls, self.bad = [], set(bad)

    def get(self, url, **kwargs):
        self.urls.append(url)
        name = url.rsplit("/", 1)[1]
        data = parquet_bytes([f"{name} doc {i}" for i in range(3)])
        resp = FakeResponse(data[:len(data) // 2] if name in self.bad else data)  # a truncated body for the bad ones
        resp.headers["X-Linked-ETag"] = '"' + hashlib.sha256(data).hexdigest() + '"'
        return resp


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setattr(dataset.time, "sleep", lambda s: None)  # no backoff waits
    fake = FakeHub()
    monkeypatch.setattr(requests, "get", fake.get)
    return fake


def test_sources_names_urls_and_validation_shard(hub, tmp_path):
    assert SOURCES["climbmix"].last_shard == 6542 and SOURCES["fineweb-edu"].last_shard == 1822
    assert dataset.shard_name(6542) == "shard_06542.parquet"
    data_dir = download(2, workers=1)  # climbmix is the default
    assert data_dir == str(tmp_path / "base_data" / "climbmix") == default_data_dir()
    assert sorted(hub.urls) == [f"https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{i:05d}.parquet"
                                for i in (0, 1, 6542)]
    files = list_parquet_files(data_dir)
    assert [os.path.basename(f) for f in dataset.split_files(data_dir, "val")] == ["shard_06542.parquet"]
    assert len(files) == 3 and not [f for f in os.listdir(data_dir) if f.endswith(".part")]
    assert json.load(open(os.path.join(data_dir, dataset.NOTE))) == {"dataset": "climbmix", "repo": "karpathy/climbmix-400b-shuffle"}
    hub.urls.clear()
    download(1, dataset="fineweb-edu", workers=1)
    assert sorted(hub.urls) == [f"https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{i:05d}.parquet"
                                for i in (0, 1822)]


def test_resume_after_partial_download(hub):
    data_dir = download(1, workers=1)
    first = os.path.join(data_dir, "shard_00000.parquet")
    mtime = os.path.getmtime(first)
    with open(os.path.join(data_dir, "shard_00001.parquet.part"), "wb") as f:  # an interrupted download
        f.write(b"PAR1 half a shard")
    hub.urls.clear()
    download(3, workers=2)
    assert sorted(u.rsplit("/", 1)[1] for u in hub.urls) == ["shard_00001.parquet", "shard_00002.parquet"]  # only the missing ones
    assert os.path.getmtime(first) == mtime
    assert dataset.verify_shard(os.path.join(data_dir, "shard_00001.parquet")) == 3
    assert not [f for f in os.listdir(data_dir) if f.endswith(".part")]


def test_corrupt_shard_refused(hub, monkeypatch):
    hub.bad.add("shard_00000.parquet")  # its body does not match the Hub's SHA-256
    with pytest.raises(RuntimeError, match="sha256 mismatch.*shard_00000"):
        download(1, workers=1, retries=2)
    data_dir = default_data_dir()
    assert not os.path.exists(os.path.join(data_dir, "shard_00000.parquet"))
    assert not [f for f in os.listdir(data_dir) if f.endswith(".part")]
    # no checksum from the Hub: the full parquet read still refuses it
    monkeypatch.setattr(requests, "get", lambda url, **k: FakeResponse(b"PAR1 not a parquet file PAR1"))
    with pytest.raises(RuntimeError, match="corrupt or truncated parquet"):
        download(1, workers=1, retries=1)
    assert not [f for f in os.listdir(data_dir) if f.startswith("shard_00000")]


def test_damaged_shard_on_disk_is_fetched_again(hub):
    data_dir = default_data_dir()
    os.makedirs(data_dir)
    download(0, workers=1)  # claims the folder, fetches the val shard
    with open(os.path.join(data_dir, "shard_00000.parquet"), "wb") as f:
        f.write(b"garbage")
    hub.urls.clear()
    download(1, workers=1)
    assert [u.rsplit("/", 1)[1] for u in hub.urls] == ["shard_00000.parquet"]
    assert dataset.verify_shard(os.path.join(data_dir, "shard_00000.parquet")) == 3


def test_sources_kept_apart(hub, tmp_path):
    climb = download(1, workers=1)
    fine = download(1, dataset="fineweb-edu", workers=1)
    assert climb != fine and os.path.basename(fine) == "fineweb-edu"
    with pytest.raises(ValueError, match="holds climbmix shards"):
        download(1, climb, dataset="fineweb-edu")
    legacy = tmp_path / "old"  # shards without a note: their source is unknown, so nothing is added to them
    legacy.mkdir()
    (legacy / "shard_00000.parquet").write_bytes(parquet_bytes(["x"]))
    with pytest.raises(ValueError, match="unknown source"):
        download(1, str(legacy))
    with pytest.raises(ValueError, match="dataset 'fineweb'"):
        download(1, dataset="fineweb")
    assert data_plan(climb, 100_000_000)["dataset"] == "climbmix"
    assert data_plan(str(legacy), 1)["dataset"] is None and data_plan(str(legacy), 1)["train_shards_needed"] is None


def test_offline_error_is_one_line(monkeypatch, tmp_path):
    def refuse(url, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'")
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(dataset.time, "sleep", lambda s: None)
    with pytest.raises(UserError) as e:  # the first shard fails at once: no retries, no other worker starts
        download(1, str(tmp_path / "d"), workers=1, retries=2)
    assert "\n" not in str(e.value) and "cannot reach huggingface.co" in str(e.value) and "--data-dir" in str(e.value)


def test_shards_for_tokens_matches_the_shell_helper():
    # s20 at ratio 4 (~810M tokens) on ClimbMix: 810M x 1.2 / 61M -> 16 shards
    assert shards_for_tokens(810_000_000) == 16
    assert shards_for_tokens(10**15) == 6542  # never more than the train shards there are
    for name in SOURCES:
        for tokens in (1, 123_456_789, 810_000_000, 5 * 10**10):
            out = subprocess.run(["bash", "-c", f". runs/common.sh; shards_for_tokens {name} {tokens}"], cwd=ROOT,
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            assert int(out.stdout) == shards_for_tokens(tokens, name), (name, tokens)


def test_looped_params_matches_the_model():
    import torch
    from nanochat.gpt import GPT, GPTConfig
    for size in (1, 4, 7, 12, 20, 32):
        with torch.device("meta"):
            model = GPT(GPTConfig.from_size(size))
        out = subprocess.run(["bash", "-c", f". runs/common.sh; looped_params {size}"], cwd=ROOT, capture_output=True, text=True)
        assert int(out.stdout) == model.num_params()["non_embedding"], size


def test_tokenizer_records_its_data(shard_dir, tmp_path):
    with open(os.path.join(shard_dir, dataset.NOTE), "w") as f:  # as download() leaves it
        json.dump({"dataset": "climbmix", "repo": "karpathy/climbmix-400b-shuffle"}, f)
    out_dir = tmp_path / "tok"
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tmp_path / "base")}
    proc = subprocess.run([sys.executable, "-m", "scripts.tok_train", "--data-dir", shard_dir,
                           "--out-dir", str(out_dir), "--vocab-size", "300", "--max-chars", "20000"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    note = json.load(open(out_dir / dataset.NOTE))
    assert note["dataset"] == "climbmix" and note["dir"] == os.path.abspath(shard_dir) and note["max_chars"] == 20000
    assert "data: climbmix" in proc.stdout
