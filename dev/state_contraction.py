"""
How fast the recurrent state of a looped checkpoint settles: for each iteration i, the mean
relative change |s_i - s_{i-1}| / |s_i| over the validation tokens, and the cosine between
s_i and the prelude output e. A state that stops moving after one or two iterations makes
every r >= 2 compute the same function, which is why val bpb can be flat in r.

    python dev/state_contraction.py --model-tag s2 --data-dir ../shared/data/pretrain --max-r 16
"""

import argparse

import torch
import torch.nn.functional as F

from nanochat.checkpoint_manager import load_model
from nanochat.common import COMPUTE_DTYPE
from nanochat.gpt import rms_norm
from nanochat.dataloader import DataLoader

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--model-tag", required=True, help="folder under base_checkpoints")
parser.add_argument("--data-dir", required=True, help="parquet shards; the last one is the validation split")
parser.add_argument("--max-r", type=int, default=16, help="iterations to run")
parser.add_argument("--rows", type=int, default=8, help="validation rows")
args = parser.parse_args()

model, tokenizer, meta = load_model("base", args.model_tag)
T = model.config.sequence_len
x, _ = next(iter(DataLoader(tokenizer, args.data_dir, "val", args.rows, T, 0, 1, torch.device("cpu"))))
with torch.no_grad():
    cos_sin = model._rotary(slice(0, T))
    e = rms_norm(model.wte(x).to(COMPUTE_DTYPE))  # the prelude, as GPT.forward runs it
    for block in model.prelude:
        e = block(e, cos_sin)
    ves = {int(i): emb(x) for i, emb in model.value_embeds.items()}
    s = model._init_state(e, None)
    print(f"{args.model_tag}: init_state={model.config.init_state}, inject={model.config.inject_init}")
    print("| iteration | mean rel. change of s | cos(s, e) |\n|---|---|---|")
    for i in range(1, args.max_r + 1):
        s_new = model._iterate(e, s, cos_sin, ves)
        change = ((s_new - s).norm(dim=-1) / s_new.norm(dim=-1).clamp_min(1e-12)).mean().item()
        cos = F.cosine_similarity(s_new, e, dim=-1).mean().item()
        s = s_new
        print(f"| {i} | {change:.2e} | {cos:.3f} |")
