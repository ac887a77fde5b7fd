"""Loading a file never runs code: checkpoints load with torch.load(weights_only=True), the
tokenizer is JSON, and a crafted pickle (in model.pt, an optimizer shard or an old
tokenizer.pkl) is refused with one line naming the file, its payload never run. Old pickled
tokenizers convert with one command."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from nanochat.checkpoint_manager import load_file, save_checkpoint, step_dir
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Payload:
    """Unpickling this creates a directory: proof that the file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _one_line_naming(message, path):
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("name", ["model.pt", "optim_rank0.pt", "loader_rank0.pt"])
def test_crafted_checkpoint_file_is_refused(tmp_path, name):
    marker = tmp_path / "ran"
    save_checkpoint(str(tmp_path), 1, {"w": torch.ones(2)}, {"state": {}}, {"cursor": 3}, {"model_config": {}})
    path = os.path.join(step_dir(str(tmp_path), 1), name)
    torch.save({"w": torch.ones(2), "evil": Payload(marker)}, path)
    with pytest.raises(ValueError) as e:
        load_file(str(tmp_path), 1, name)
    _one_line_naming(str(e.value), path)
    assert "refused" in str(e.value) and "posix.mkdir" in str(e.value)
    assert not marker.exists()
    out = subprocess.run([sys.executable, "-m", "nanochat.checkpoint_manager", "--convert", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and path in out.stderr, out.stderr
    assert not marker.exists()


def test_checkpoint_files_round_trip_as_data(tmp_path):
    """What the training scripts save (state dicts of tensors, ints, floats, strings, lists,
    tuples, dicts) loads under weights_only."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    loader = {"epoch": 1, "cursor": (2, 5), "buffer": [(0, [1, 2, 3])], "stats": {"pad": 0.5}, "name": "x"}
    save_checkpoint(str(tmp_path), 7, model.state_dict(), opt.state_dict(), loader, {"model_config": {}})
    assert torch.equal(load_file(str(tmp_path), 7, "model.pt")["weight"], model.weight)
    assert load_file(str(tmp_path), 7, "optim_rank0.pt")["param_groups"] == opt.state_dict()["param_groups"]
    assert load_file(str(tmp_path), 7, "loader_rank0.pt") == loader


def test_tokenizer_is_stored_as_data(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["token_bytes.pt", "tokenizer.json"]
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["pattern"] == SPLIT_PATTERN and len(data["mergeable_ranks"]) + len(data["special_tokens"]) == 512
    text = "Fellow citizens, 1789 — ünïcödé <|bos|>"
    assert Tokenizer.load(tmp_path).encode(text) == tokenizer.encode(text)
    data["mergeable_ranks"][5] = "not base64!"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        Tokenizer.load(tmp_path)
    _one_line_naming(str(e.value), tmp_path / "tokenizer.json")


def test_old_pickled_tokenizer_gets_a_conversion_command(tokenizer, tmp_path):
    with open(tmp_path / "tokenizer.pkl", "wb") as f:  # the old format
        pickle.dump({"mergeable_ranks": tokenizer.enc._mergeable_ranks, "pattern": SPLIT_PATTERN}, f)
    with pytest.raises(ValueError) as e:
        Tokenizer.load(tmp_path)
    _one_line_naming(str(e.value), tmp_path / "tokenizer.pkl")
    command = f"python -m nanochat.checkpoint_manager --convert {tmp_path}"
    assert command in str(e.value)
    out = subprocess.run([sys.executable, *command.split()[1:]], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Tokenizer.load(tmp_path).encode("Fellow citizens") == tokenizer.encode("Fellow citizens")


def test_crafted_pickled_tokenizer_is_refused(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "tokenizer.pkl", "wb") as f:
        pickle.dump({"mergeable_ranks": Payload(marker), "pattern": SPLIT_PATTERN}, f)
    out = subprocess.run([sys.executable, "-m", "nanochat.checkpoint_manager", "--convert", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert str(tmp_path / "tokenizer.pkl") in out.stderr and "refused" in out.stderr
    assert not marker.exists() and not (tmp_path / "tokenizer.json").exists()


def test_crafted_token_bytes_and_unknown_meta_fields_are_one_line(tmp_path):
    """A crafted token_bytes.pt is refused without running it, and a meta.json whose model_config
    has a field this code does not know names the file, not a TypeError."""
    from nanochat.checkpoint_manager import build_model
    from nanochat.tokenizer import TOKEN_BYTES_FILE, get_token_bytes
    marker = tmp_path / "ran"
    torch.save({"bytes": torch.ones(2), "evil": Payload(marker)}, tmp_path / TOKEN_BYTES_FILE)
    with pytest.raises(ValueError) as e:
        get_token_bytes(str(tmp_path))
    _one_line_naming(str(e.value), tmp_path / TOKEN_BYTES_FILE)
    assert "refused tokenizer file" in str(e.value) and not marker.exists()
    save_checkpoint(str(tmp_path / "ck"), 1, {"w": torch.ones(2)}, {}, {}, {"model_config": {"n_embd": 64, "n_wings": 2}})
    with pytest.raises(ValueError) as e:
        build_model(str(tmp_path / "ck"), 1)
    _one_line_naming(str(e.value), os.path.join(step_dir(str(tmp_path / "ck"), 1), "meta.json"))
    assert "unknown field(s) n_wings" in str(e.value)
