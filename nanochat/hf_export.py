"""
Hugging Face format: write a nanochat model and tokenizer as a folder that transformers
loads (`trust_remote_code=True`), and read such a folder back into nanochat.

The folder (scripts/export_hf.py writes it):
  model.safetensors              the GPT state dict in fp32, under nanochat/gpt.py's names
  config.json                    model_type "looped_nanochat", auto_map, GPTConfig's fields,
                                 recur (the default r: the checkpoint's eval r), nanochat_step
  generation_config.json         greedy; stops on <|assistant_end|> or <|bos|> like our Engine
  modeling_looped_nanochat.py    nanochat/hf_model.py copied: the remote code (stands alone)
  tokenizer.json                 our BPE in the `tokenizers` library's format (below)
  tokenizer_config.json, chat_template.jinja   special tokens; the chat template, which
                                 renders the ids of Tokenizer.render_conversation

The tokenizer: tiktoken keeps merges as token bytes -> rank; a `tokenizers` BPE needs a
vocab of byte-level strings (GPT-2's byte -> printable character map) and an ordered merge
list. Every way to split a token into two tokens becomes a merge, ordered by the rank of
the token they form, so the lowest-ranked merge available is the one tiktoken applies; with
ignore_merges, a pre-token that is itself a token is kept whole, as tiktoken does. The
split regex is ours and the special tokens come after the merges. A post-processor puts
<|bos|> in front of `tokenizer(text)` (our documents all start with it); the chat template
writes its own <|bos|>. load_exported inverts the map, so a folder is all we need.
Known difference: text that spells a special token ("<|user_end|>") inside a message is
read as that special token by transformers' tokenizer, as ordinary text by ours.
"""

import dataclasses
import json
import os
import shutil

import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.recurrence import resolve_r
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, chat_template

MODEL_TYPE = "looped_nanochat"
MODELING_FILE = "modeling_looped_nanochat.py"
WEIGHTS_FILE = "model.safetensors"
HF_MODEL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_model.py")

# -----------------------------------------------------------------------------
# tokenizer

def _byte_to_char():
    """GPT-2's reversible map from the 256 bytes to printable characters: printable Latin-1
    bytes map to themselves, the rest to code points 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_tokenizer(tokenizer, max_length):
    """Our Tokenizer as a transformers PreTrainedTokenizerFast (see the module docstring).
    max_length: the training context, which lm-evaluation-harness reads as the model's."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast
    ranks = tokenizer.enc._mergeable_ranks
    b2c = _byte_to_char()
    as_str = lambda token: "".join(b2c[b] for b in token)
    vocab = {as_str(t): rank for t, rank in ranks.items()}
    merges = []
    for token in sorted(ranks, key=ranks.get):
        pairs = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(as_str(a), as_str(b)) for a, b in sorted(pairs, key=lambda p: (ranks[p[0]], ranks[p[1]]))]
    rust = RustTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    rust.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    rust.decoder = decoders.ByteLevel()
    rust.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
    bos = tokenizer.get_bos_token_id()
    assert rust.token_to_id("<|bos|>") == bos == len(ranks), f"special tokens must follow the merges: bos id {bos}"
    rust.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                        special_tokens=[("<|bos|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<|bos|>", eos_token="<|assistant_end|>",
                                   pad_token="<|assistant_end|>", chat_template=chat_template(),
                                   model_input_names=["input_ids", "attention_mask"], model_max_length=max_length,
                                   padding_side="left")  # a padded batch for generate: the prompts end together


def tokenizer_from_folder(path):
    """Our Tokenizer rebuilt from an exported tokenizer.json (the inverse of hf_tokenizer)."""
    file = os.path.join(path, "tokenizer.json")
    with open(file) as f:
        data = json.load(f)
    c2b = {c: b for b, c in _byte_to_char().items()}
    try:
        vocab = data["model"]["vocab"]
        ranks = {bytes(c2b[c] for c in token): rank for token, rank in vocab.items()}
        specials = sorted((t["id"], t["content"]) for t in data["added_tokens"])
        pattern = data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{file} is not a tokenizer written by nanochat/hf_export.py: {e!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))) or pattern != SPLIT_PATTERN \
            or specials != [(len(ranks) + i, name) for i, name in enumerate(SPECIAL_TOKENS)]:
        raise ValueError(f"{file}: ranks, split pattern or special tokens differ from nanochat's")
    return Tokenizer._from_ranks(ranks)


# -----------------------------------------------------------------------------
# export and load

def hf_config(config, recur, tokenizer, step=None):
    """config.json's content: GPTConfig's fields and what transformers needs to find the code."""
    special = tokenizer.encode_special
    stop = [special("<|assistant_end|>"), tokenizer.get_bos_token_id()]
    return {
        **dataclasses.asdict(config), "recur": recur, "nanochat_step": step,
        "model_type": MODEL_TYPE, "architectures": ["LoopedNanochatForCausalLM"],
        "auto_map": {"AutoConfig": f"{MODELING_FILE[:-3]}.LoopedNanochatConfig",
                     "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.LoopedNanochatForCausalLM"},
        "bos_token_id": tokenizer.get_bos_token_id(), "eos_token_id": stop, "pad_token_id": stop[0],
        "tie_word_embeddings": False, "dtype": "float32",
        "max_position_embeddings": config.sequence_len,  # the context it trained on (lm-eval and others read it)
    }


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def export(model, tokenizer, out_dir, recur=None, step=None):
    """Write the folder described in the module docstring; returns its path. recur: the
    default r of the exported model (None: the recipe's, 1 for arch="gpt"; scripts/export_hf passes the
    checkpoint's)."""
    from safetensors.torch import save_file
    cfg = model.config
    recur = resolve_r(cfg.arch, requested=recur)
    if not (isinstance(recur, int) and recur >= 1):
        raise ValueError(f"recur={recur!r}: expected an int >= 1 (1 for arch='gpt')")
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, the model {cfg.vocab_size}")
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    config = hf_config(cfg, recur, tokenizer, step)
    _write_json(os.path.join(out_dir, "config.json"), config)
    _write_json(os.path.join(out_dir, "generation_config.json"),
                {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                 "pad_token_id": config["pad_token_id"], "do_sample": False})
    shutil.copyfile(HF_MODEL_SOURCE, os.path.join(out_dir, MODELING_FILE))
    hf_tokenizer(tokenizer, cfg.sequence_len).save_pretrained(out_dir)
    return out_dir


def is_exported(path):
    """True if path is a folder written by export."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return False
    with open(file) as f:
        return json.load(f).get("model_type") == MODEL_TYPE


def load_exported(path, device="cpu"):
    """(model, tokenizer, meta) from an exported folder, in eval mode. meta carries what our
    scripts read from a checkpoint's: model_config, step, eval_r (the folder's recur)."""
    from safetensors.torch import load_file
    if not is_exported(path):
        raise FileNotFoundError(f"{path}: not a folder written by scripts/export_hf.py (no config.json "
                                f"with model_type {MODEL_TYPE!r})")
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    config = GPTConfig(**{f.name: hf[f.name] for f in dataclasses.fields(GPTConfig)})
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # the rotary tables, which the state dict does not hold
    model.load_state_dict(load_file(os.path.join(path, WEIGHTS_FILE), device=str(device)))
    model.eval()
    meta = {"model_config": dataclasses.asdict(config), "step": hf.get("nanochat_step") or 0,
            "eval_r": hf["recur"], "source": path}
    return model, tokenizer_from_folder(path), meta
