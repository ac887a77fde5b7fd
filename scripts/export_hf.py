"""
Export a checkpoint in the Hugging Face format: a folder that transformers loads with
trust_remote_code (model.safetensors, config.json, the remote code, tokenizer.json and the
chat template; see nanochat/hf_export.py), then load it back with transformers and compare
its logits with ours.

    python -m scripts.export_hf --source sft --model-tag s20                # -> $NANOCHAT_BASE_DIR/hf/sft_s20
    python -m scripts.export_hf --source base --model-tag s20 --recur 8 --out /tmp/s20-base

Our scripts take the folder as a model source (`--source <folder>`), transformers as
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True). Needs the [hf] extra.
"""

import argparse
import os
import sys

import torch

from nanochat import errors
from nanochat.checkpoint_manager import build_model, find_checkpoint_dir
from nanochat.common import COMPUTE_DTYPE, get_base_dir
from nanochat.hf_export import export, load_exported
from nanochat.recurrence import resolve_r
from nanochat.tokenizer import get_tokenizer

parser = argparse.ArgumentParser(description="Export a checkpoint as a Hugging Face transformers folder")
parser.add_argument("--source", type=str, default="sft", choices=["base", "sft", "rl"], help="which stage's checkpoints")
parser.add_argument("--model-tag", type=str, default="", help="checkpoint folder (empty = the most recent)")
parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1 = the latest)")
parser.add_argument("--recur", type=int, default=-1, help="the exported model's default r (-1 = the checkpoint's eval r)")
parser.add_argument("--out", type=str, default="", help="output folder (empty = $NANOCHAT_BASE_DIR/hf/<source>_<tag>)")
parser.add_argument("--check", type=int, default=1, choices=[0, 1],
                    help="load the folder with transformers and compare its logits with ours (1 = yes)")
args = parser.parse_args()
errors.install()  # a bad input of the user's: one line and exit code 2, not a traceback
print(f"args: {vars(args)}")

try:
    import safetensors, tokenizers, transformers  # noqa: F401  (the [hf] extra)
except ImportError as e:
    print(f"error: {e}: install the [hf] extra: pip install -e '.[hf]'", file=sys.stderr)
    sys.exit(2)

with errors.user_input():  # a missing checkpoint or a bad --recur: one line and exit code 2
    checkpoint_dir = find_checkpoint_dir(args.source, args.model_tag or None)
    model, meta = build_model(checkpoint_dir, None if args.step < 0 else args.step)
    tokenizer = get_tokenizer()
    recur = resolve_r(model.config.arch, meta, args.recur)
tag = os.path.basename(checkpoint_dir)
out = args.out or os.path.join(get_base_dir(), "hf", f"{args.source}_{tag}")
export(model, tokenizer, out, recur=recur, step=meta["step"])
print(f"exported {args.source} {tag} step {meta['step']} (default r={recur}) to {out}:")
for name in sorted(os.listdir(out)):
    print(f"  {name:32s} {os.path.getsize(os.path.join(out, name)):>12,d} bytes")

if args.check:
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ours, _, _ = load_exported(out)
    idx = torch.randint(0, model.config.vocab_size, (2, min(64, model.config.sequence_len)),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (hf(idx).logits - ours(idx, r=hf.config.recur)).abs().max().item()
    print(f"check: transformers vs nanochat logits on 2 x {idx.size(1)} random tokens, r={hf.config.recur}: "
          f"max |diff| = {err:.2e} (ours in {COMPUTE_DTYPE})")
    if COMPUTE_DTYPE == torch.float32 and not err < 1e-4:
        print("error: the exported model does not reproduce ours", file=sys.stderr)
        sys.exit(1)
