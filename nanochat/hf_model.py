"""
The looped nanochat model for Hugging Face transformers (`trust_remote_code=True`).

This file is copied as-is into every folder that scripts/export_hf.py writes, so it stands
alone: it imports torch and transformers, never nanochat. It is a second implementation of
nanochat/gpt.py's inference path (the training options, truncated BPTT and the sampled
initial state, are left out); tests/test_hf_export.py compares the two on random configs
that cover every GPTConfig field, so a change to one that the other lacks fails a test.

    e      = prelude(norm(wte(idx)))              n_prelude blocks, once
    s_0    = e ("copy") | fixed truncated-normal noise indexed by position ("randn")
    s_i    = recur(inject(concat(e, s_{i-1})))    i = 1..r; the same n_recur blocks each time
    logits = softcap * tanh(lm_head(norm_f(coda(norm_r(s_r)))) / softcap)

r is `config.recur` by default and a `forward` / `generate` argument (`model.generate(ids, r=8)`).
Blocks are sandwich-normed, attention has QK-norm, rotary, GQA, sliding windows on the
repeated stack and optional value embeddings; see nanochat/gpt.py for the sources.

KV cache: a transformers DynamicCache with one layer per (block, iteration), laid out
prelude, then iteration 0's recur blocks, ..., iteration r-1's, then coda. One cache serves
one r; the first forward with a cache fixes it. Padding, left or right, follows
attention_mask: a row's positions count its real tokens only, so its logits are those of
the row alone (positions that are padding give unspecified logits).
Weights may be loaded in bf16; norms, softcap and logits are computed in fp32.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

# constants shared with nanochat/gpt.py (the drift test checks they agree)
ROTARY_BASE = 100_000
NORM_EPS = 1e-6
VE_GATE_CHANNELS = 12
INIT_STATE_SEED = 1337
NOISE_CHUNK = 128
VOCAB_MULTIPLE = 64


class LoopedNanochatConfig(PretrainedConfig):
    """nanochat.gpt.GPTConfig's fields under the same names, plus `recur`, the default r.
    inject_init only says how the weights were initialised: kept so the export round-trips."""
    model_type = "looped_nanochat"
    gpt_fields = ("sequence_len", "vocab_size", "n_embd", "n_head", "n_kv_head", "arch", "n_prelude", "n_recur",
                  "n_coda", "window_pattern", "short_window", "value_embeds", "init_state", "init_state_std",
                  "inject_init", "softcap")

    def __init__(self, sequence_len=2048, vocab_size=32768, n_embd=1280, n_head=10, n_kv_head=10, arch="looped",
                 n_prelude=2, n_recur=4, n_coda=2, window_pattern="SSSL", short_window=768, value_embeds=False,
                 init_state="copy", init_state_std=1.0, inject_init="identity", softcap=15.0, recur=4, **kwargs):
        self.sequence_len, self.vocab_size, self.n_embd = sequence_len, vocab_size, n_embd
        self.n_head, self.n_kv_head, self.arch = n_head, n_kv_head, arch
        self.n_prelude, self.n_recur, self.n_coda = n_prelude, n_recur, n_coda
        self.window_pattern, self.short_window, self.value_embeds = window_pattern, short_window, value_embeds
        self.init_state, self.init_state_std, self.inject_init = init_state, init_state_std, inject_init
        self.softcap, self.recur = softcap, recur
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        if arch not in ("looped", "gpt") or init_state not in ("copy", "randn"):
            raise ValueError(f"arch={arch!r}, init_state={init_state!r}: expected looped|gpt and copy|randn")
        if arch == "gpt" and recur != 1:
            raise ValueError(f"recur={recur}: arch='gpt' runs its blocks once, expected 1")


# -----------------------------------------------------------------------------
# small pure functions

def rms_norm(x, weight=None):
    w = None if weight is None else weight.float()
    return F.rms_norm(x.float(), (x.size(-1),), w, NORM_EPS).to(x.dtype)


def rotary(pos, head_dim, dtype):
    """(cos, sin), each (B, T, 1, D/2), at the absolute positions pos (B, T)."""
    half = head_dim // 2
    inv_freq = ROTARY_BASE ** (-torch.arange(half, dtype=torch.float32, device=pos.device) / half)
    angles = (pos.float()[..., None] * inv_freq)[:, :, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def window_sizes(pattern, n_blocks, short_window):
    """short_window for S, None for L, tiled over the blocks; the last block is always L."""
    pattern = pattern.upper()
    windows = [short_window if pattern[i % len(pattern)] == "S" else None for i in range(n_blocks)]
    windows[-1] = None
    return windows


def visibility(key_ok, past, windows):
    """Which keys each query may attend to, for padded batches and a cache of `past` tokens.
    key_ok (B, Tk) is the attention mask (1 = a real token), Tk = past + Tq. A key's position
    counts the real tokens before it, so a left-padded row has the positions it would have
    alone. Query a (index past + a) sees key j when j is real, j <= past + a, and, for a
    window w, pos_q - w < pos_j. A padding query sees all earlier keys: its output is never
    read, but a row with no key at all would be NaN. Returns (positions of the queries
    (B, Tq), {window: bool mask (B, 1, Tq, Tk)})."""
    Tk = key_ok.size(1)
    pos_k = (key_ok.long().cumsum(-1) - 1).clamp_min(0)  # (B, Tk)
    pos_q = pos_k[:, past:]
    idx = torch.arange(Tk, device=key_ok.device)
    causal = idx[None, None, :] <= idx[past:][None, :, None]  # (1, Tq, Tk)
    base = causal & (key_ok[:, None, :] | ~key_ok[:, past:, None])
    masks = {w: (base if w is None else base & (pos_k[:, None, :] > pos_q[:, :, None] - w))[:, None]
             for w in set(windows)}
    return pos_q, masks


def attention(q, k, v, mask):
    """q (B, Tq, H, D), k and v (B, Tk, Hkv, D), mask (B, 1, Tq, Tk) True = may attend."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.size(1) != k.size(1))
    return y.transpose(1, 2)  # (B, Tq, H, D)


# -----------------------------------------------------------------------------
# modules (parameter names match nanochat/gpt.py, so the state dict is the same)

class Linear(nn.Linear):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight)


class Attention(nn.Module):
    def __init__(self, config, value_embed):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        C, kv_dim = config.n_embd, config.n_kv_head * self.head_dim
        self.c_q = Linear(C, C)
        self.c_k = Linear(C, kv_dim)
        self.c_v = Linear(C, kv_dim)
        self.c_proj = Linear(C, C)
        self.ve_gate = Linear(VE_GATE_CHANNELS, config.n_kv_head) if value_embed else None

    def forward(self, x, cos_sin, mask, ve, cache, layer):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value residual with a per-kv-head gate in (0, 3)
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = rms_norm(q), rms_norm(k)
        q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
        if cache is not None:  # DynamicCache stores (B, Hkv, T, D) and returns all positions so far
            k, v = cache.update(k.transpose(1, 2), v.transpose(1, 2), layer)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        return self.c_proj(attention(q, k, v, mask).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, value_embed=False):
        super().__init__()
        self.n1, self.n2, self.n3, self.n4 = (RMSNorm(config.n_embd) for _ in range(4))
        self.attn = Attention(config, value_embed)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, mask, ve=None, cache=None, layer=None):
        x = self.n2(x + self.attn(self.n1(x), cos_sin, mask, ve, cache, layer))
        return self.n4(x + self.mlp(self.n3(x)))


# -----------------------------------------------------------------------------
# the model

class LoopedNanochatForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LoopedNanochatConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True  # each block call is checkpointed in training (fine-tuning recipes)
    _supports_sdpa = True  # attention is F.scaled_dot_product_attention already: "sdpa" is what runs

    def __init__(self, config):
        super().__init__(config)
        C, looped = config.n_embd, config.arch == "looped"
        padded_vocab = math.ceil(config.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self.wte = nn.Embedding(padded_vocab, C)
        self.prelude = nn.ModuleList(Block(config) for _ in range(config.n_prelude))
        ve_blocks = [i for i in range(config.n_recur)
                     if config.value_embeds and i % 2 == (config.n_recur - 1) % 2]
        self.recur = nn.ModuleList(Block(config, i in ve_blocks) for i in range(config.n_recur))
        self.coda = nn.ModuleList(Block(config) for _ in range(config.n_coda))
        self.windows = window_sizes(config.window_pattern, config.n_recur, config.short_window)
        kv_dim = config.n_kv_head * (C // config.n_head)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(padded_vocab, kv_dim) for i in ve_blocks})
        self.inject = Linear(2 * C, C) if looped else None
        self.norm_r = RMSNorm(C) if looped else None
        self.norm_f = RMSNorm(C)
        self.lm_head = Linear(C, padded_vocab)
        self._noise = {}  # device -> fixed initial-state noise (T, C), grown on demand
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable()
        self.post_init()

    def _init_weights(self, module):
        """Only for weights a checkpoint lacks (a fresh model): small normal matrices, unit norms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.wte

    def get_output_embeddings(self):
        return self.lm_head

    def set_input_embeddings(self, embedding):
        self.wte = embedding

    def set_output_embeddings(self, head):
        self.lm_head = head

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """transformers' resize (wte and lm_head), then the value embeddings to the same rows. The
        rows stay a multiple of VOCAB_MULTIPLE, as nanochat pads them, so the folder still loads into
        nanochat's tools; config.vocab_size becomes new_num_tokens (the logits' width)."""
        if new_num_tokens is None:
            return super().resize_token_embeddings(None, pad_to_multiple_of, mean_resizing)
        rows = math.ceil(new_num_tokens / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        embeds = super().resize_token_embeddings(rows, None, mean_resizing)
        for name, old in list(self.value_embeds.items()):
            new = nn.Embedding(rows, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                keep = min(rows, old.num_embeddings)
                new.weight[:keep] = old.weight[:keep]
                new.weight[keep:] = old.weight[:keep].mean(0)
            self.value_embeds[name] = new
        self.config.vocab_size = self.vocab_size = new_num_tokens
        return embeds

    def _fixed_noise(self, stop, device):
        """Rows 0..stop-1 of nanochat's position-indexed initial-state noise: chunks of
        NOISE_CHUNK positions, chunk c drawn on the CPU from seed INIT_STATE_SEED + c."""
        table = self._noise.get(device)
        if table is None or table.size(0) < stop:
            C, std = self.config.n_embd, self.config.init_state_std
            chunks = []
            for c in range(math.ceil(stop / NOISE_CHUNK)):
                g = torch.Generator().manual_seed(INIT_STATE_SEED + c)
                chunks.append(nn.init.trunc_normal_(torch.empty(NOISE_CHUNK, C), 0.0, std, -3 * std, 3 * std, generator=g))
            table = self._noise[device] = torch.cat(chunks).to(device)
        return table[:stop]

    def generate(self, *args, **kwargs):
        """GenerationMixin.generate with a lazily grown DynamicCache: its layer count (blocks x
        iterations) depends on r, which a cache built from the config cannot know."""
        if kwargs.get("use_cache", True) and kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            kwargs["cache"] = DynamicCache()
        return super().generate(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None, labels=None, r=None,
                position_ids=None, inputs_embeds=None, logits_to_keep=0, past_key_values=None, **kwargs):
        """Logits (B, T, vocab_size) in fp32. r: loop iterations (default config.recur).
        cache: a DynamicCache (created when use_cache is set); past_key_values is its old name."""
        cfg = self.config
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("LoopedNanochatForCausalLM takes input_ids (inputs_embeds is not supported)")
        r = cfg.recur if r is None else r
        if cfg.arch == "gpt" and r != 1:
            raise ValueError(f"r={r}: arch='gpt' runs its blocks once")
        if not (isinstance(r, int) and r >= 1):
            raise ValueError(f"r={r!r}: expected an int >= 1")
        cache = past_key_values if cache is None else cache
        if cache is None and use_cache:
            cache = DynamicCache()
        if cache is not None:
            if getattr(cache, "looped_r", r) != r:
                raise ValueError(f"r={r}: this cache was filled at r={cache.looped_r}; one cache serves one r")
            cache.looped_r = r
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            key_ok = torch.ones(B, past + T, dtype=torch.bool, device=input_ids.device)
        elif attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask: expected shape ({B}, {past + T}) (cached + new tokens), "
                             f"got {tuple(attention_mask.shape)}")
        else:
            key_ok = attention_mask.to(input_ids.device).bool()
        pos, masks = visibility(key_ok, past, [None, *self.windows])
        if position_ids is not None and not torch.equal(position_ids.to(pos.device), pos.expand_as(position_ids)):
            raise ValueError("position_ids: only the positions implied by attention_mask (real tokens count "
                             "from 0) are supported")
        cos_sin = rotary(pos, cfg.n_embd // cfg.n_head, self.wte.weight.dtype)
        x = rms_norm(self.wte(input_ids))
        ves = {int(i): emb(input_ids) for i, emb in self.value_embeds.items()}
        layer = 0  # this block's cache layer: prelude, recur x iterations, coda

        def stack(blocks, x, windows=None, ves=None):
            nonlocal layer
            for i, block in enumerate(blocks):
                mask = masks[None if windows is None else windows[i]]
                ve = None if ves is None else ves.get(i)
                if self.gradient_checkpointing and self.training:  # recompute the block in backward
                    x = self._gradient_checkpointing_func(block.__call__, x, cos_sin, mask, ve, None, layer)
                else:
                    x = block(x, cos_sin, mask, ve, cache, layer)
                layer += 1
            return x

        if cfg.arch == "gpt":
            y = stack(self.recur, x, self.windows, ves)
        else:
            e = stack(self.prelude, x)
            if cfg.init_state == "copy":
                s = e
            else:  # the same noise as nanochat's GPT without a generator, at these absolute positions
                s = self._fixed_noise(int(pos.max()) + 1, e.device)[pos].to(e.dtype)  # (B, T, C)
            for _ in range(r):
                s = stack(self.recur, self.inject(torch.cat([e, s], dim=-1)), self.windows, ves)
            y = stack(self.coda, self.norm_r(s))
        if logits_to_keep:
            y = y[:, -logits_to_keep:]
        logits = self.lm_head(self.norm_f(y))[..., :cfg.vocab_size].float()
        logits = cfg.softcap * torch.tanh(logits / cfg.softcap)
        loss = None
        if labels is not None:  # transformers' convention: labels = input_ids, shifted here, -100 ignored
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
