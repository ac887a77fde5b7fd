"""
Save and load checkpoints.

A checkpoint is a folder `step_000123/` holding
  model.pt            the model's state dict (rank 0)
  optim_rank{r}.pt    each rank's optimizer shard (the optimizer shards its state across ranks)
  loader_rank{r}.pt   each rank's dataloader state
  meta.json           format version, model config, step, resolved arguments, anything else
The .pt files are loaded with torch.load(weights_only=True): tensors and plain containers only,
so a crafted checkpoint is refused instead of running code (the tokenizer is JSON for the same
reason). `python -m nanochat.checkpoint_manager --convert DIR` converts an old tokenizer.pkl
and checks every .pt file under DIR.
Every rank writes into `step_000123.tmp/`; only when all files are written does rank 0 rename
the folder into place (an atomic rename), so a run that crashes mid-write leaves the last good
checkpoint as the latest one, and a `.tmp` folder that loaders ignore.
"""

import dataclasses
import json
import os
import pickle
import re
import shutil
import sys
import zipfile

import torch
import torch.distributed as dist

from nanochat.common import print0
from nanochat.errors import MissingInput, UserError, short

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def step_dir(checkpoint_dir, step):
    return os.path.join(checkpoint_dir, f"step_{step:06d}")


def save_checkpoint(checkpoint_dir, step, model_state, optim_state, loader_state, meta, rank=0):
    """Collective under torchrun: every rank calls it with its own optimizer/loader state."""
    final = step_dir(checkpoint_dir, step)
    tmp = final + ".tmp"
    if rank == 0:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)  # leftovers of a crashed save
        os.makedirs(tmp)
    _barrier()
    if rank == 0:
        torch.save(model_state, os.path.join(tmp, "model.pt"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"format_version": FORMAT_VERSION, "step": step, **meta}, f, indent=2)
    torch.save(optim_state, os.path.join(tmp, f"optim_rank{rank}.pt"))
    torch.save(loader_state, os.path.join(tmp, f"loader_rank{rank}.pt"))
    _barrier()
    if rank == 0:
        old = final + ".old"
        if os.path.exists(final):  # re-saving a step (after a resume): keep the old copy until the new one is in place
            os.replace(final, old)
        os.replace(tmp, final)
        if os.path.exists(old):
            shutil.rmtree(old)
        print0(f"saved checkpoint {final}")
    _barrier()
    return final


def last_step(checkpoint_dir):
    """The highest completed step in checkpoint_dir, or None."""
    if not os.path.isdir(checkpoint_dir):
        return None
    steps = [int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(checkpoint_dir)) if m]
    return max(steps) if steps else None


def load_meta(checkpoint_dir, step=None):
    """(step, meta) of the given or latest checkpoint, with clear errors."""
    step = last_step(checkpoint_dir) if step is None else step
    if step is None:
        raise MissingInput(f"no checkpoint in {checkpoint_dir}: train one first (python -m scripts.base_train)")
    path = os.path.join(step_dir(checkpoint_dir, step), "meta.json")
    if not os.path.exists(path):
        raise MissingInput(f"checkpoint step {step} not found: {path} is missing")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {meta.get('format_version')}, this code reads {FORMAT_VERSION}")
    return step, meta


def load_file(checkpoint_dir, step, name, device="cpu"):
    path = os.path.join(step_dir(checkpoint_dir, step), name)
    if not os.path.exists(path):
        raise MissingInput(f"checkpoint file missing: {path}")
    return load_tensors(path, device, "checkpoint file",
                        f"restore it, or delete {os.path.dirname(path)} to fall back to the checkpoint before it")


def load_tensors(path, device, what, fix):
    """torch.load of tensors and plain data only (weights_only: nothing in the file can run code);
    a corrupt or crafted file ends in one line naming it (`what`) and the `fix`."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; random or truncated bytes would unpickle into nonsense
        raise UserError(f"corrupt {what} {path}: not the zip archive torch.save writes; {fix}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):  # an object that is not a tensor or plain data: never unpickled
            raise UserError(f"refused {what} {path}: {_refusal(e)}") from None
        raise UserError(f"corrupt {what} {path} ({short(e)}); {fix}") from e
    except (RuntimeError, EOFError, OSError, IndexError, KeyError) as e:
        raise UserError(f"corrupt {what} {path} ({short(e)}); {fix}") from e


def _refusal(error):
    """One line out of torch's weights-only refusal: which global the file wanted."""
    lines = [l.strip() for l in str(error).splitlines() if "GLOBAL" in l or "Unsupported" in l]
    return ("it holds objects other than tensors and plain data, which could run code when loaded"
            + (f" ({lines[0][:200]})" if lines else ""))


def build_model(checkpoint_dir, step=None, device="cpu"):
    """Rebuild the model from a checkpoint: (model, meta). The config in meta is all it needs."""
    from nanochat.gpt import GPT, GPTConfig
    step, meta = load_meta(checkpoint_dir, step)
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(meta.get("model_config", {})) - known)
    if unknown or "model_config" not in meta:
        raise UserError(f"{os.path.join(step_dir(checkpoint_dir, step), 'meta.json')}: "
                        + (f"model_config has unknown field(s) {', '.join(unknown)}: written by another version of "
                           "this code? load it with that version" if unknown else "no model_config"))
    config = GPTConfig(**meta["model_config"])
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # buffers (rotary tables) that the state dict does not hold
    model.load_state_dict(load_file(checkpoint_dir, step, "model.pt", device))
    model.eval()
    return model, meta


def base_dir_hint():
    """Where runs/runcpu.sh left its artifacts, when NANOCHAT_BASE_DIR does not point there."""
    toy = os.path.abspath(os.path.join("out", "cpu"))
    if os.path.isdir(toy) and os.environ.get("NANOCHAT_BASE_DIR") != toy:
        return f", or use those of runs/runcpu.sh: export NANOCHAT_BASE_DIR={toy}"
    return ", or set NANOCHAT_BASE_DIR to the folder that holds one"


CHECKPOINT_SOURCES = {"base": "base_checkpoints", "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}


def find_checkpoint_dir(source, model_tag=None):
    """$NANOCHAT_BASE_DIR/<source's folder>/<model_tag>; without a tag, the most recently
    updated tag folder that holds a completed checkpoint."""
    from nanochat.common import get_base_dir
    if source not in CHECKPOINT_SOURCES:
        raise ValueError(f"source={source!r}: expected one of {sorted(CHECKPOINT_SOURCES)}")
    root = os.path.join(get_base_dir(), CHECKPOINT_SOURCES[source])
    if model_tag:
        return os.path.join(root, model_tag)
    tags = [t for t in (os.listdir(root) if os.path.isdir(root) else []) if last_step(os.path.join(root, t)) is not None]
    if not tags:
        raise MissingInput(f"no {source} checkpoint under {root}: train one first{base_dir_hint()}")
    return os.path.join(root, max(tags, key=lambda t: os.path.getmtime(os.path.join(root, t))))


def load_model(source, model_tag=None, step=None, device="cpu"):
    """(model, tokenizer, meta) of the given or latest checkpoint of a stage, in eval mode.
    source: a stage (base, sft, rl), or the path of a folder written by scripts/export_hf.py
    (its own tokenizer; model_tag and step do not apply)."""
    from nanochat.tokenizer import get_tokenizer
    if source not in CHECKPOINT_SOURCES:
        if not os.path.isdir(source):
            raise ValueError(f"source={source!r}: expected one of {sorted(CHECKPOINT_SOURCES)} "
                             f"or a folder written by scripts/export_hf.py")
        from nanochat.hf_export import load_exported
        return load_exported(source, device)
    checkpoint_dir = find_checkpoint_dir(source, model_tag)
    model, meta = build_model(checkpoint_dir, step, device)
    tokenizer = get_tokenizer()
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise UserError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model {model.config.vocab_size}: "
                         f"{checkpoint_dir} was trained with another tokenizer")
    return model, tokenizer, meta


def convert(directory):
    """Make an old artifact folder loadable: tokenizer.pkl -> tokenizer.json (read without
    running code), then check that every .pt file below loads as tensors and plain data."""
    from nanochat.tokenizer import OLD_TOKENIZER_FILE, TOKENIZER_FILE, convert_pickled_tokenizer
    for root, _, files in os.walk(directory):
        if OLD_TOKENIZER_FILE in files and TOKENIZER_FILE not in files:
            print(f"wrote {convert_pickled_tokenizer(root)}")
        for name in sorted(f for f in files if f.endswith(".pt")):
            path = os.path.join(root, name)
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise UserError(f"refused checkpoint file {path}: {_refusal(e)}") from None
            print(f"ok {path}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--convert":
        raise SystemExit("usage: python -m nanochat.checkpoint_manager --convert DIR")
    try:
        convert(sys.argv[2])
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
