"""
The looped (depth-recurrent) GPT of Huginn (Geiping et al. 2025), and the plain GPT of the
same family for comparisons, in one module.

    e      = prelude(norm(wte(idx)))              n_prelude blocks, once
    s_0    = init_state(e)                        "copy": e; "randn": truncated normal noise
    s_i    = recur(inject(concat(e, s_{i-1})))    i = 1..r; the same n_recur blocks each time
    y      = coda(norm_r(s_r))                    n_coda blocks, once
    logits = softcap * tanh(lm_head(norm_f(y)) / softcap)

arch="gpt": norm(wte(idx)) -> n_recur blocks, once -> norm_f -> lm_head (no inject, no norm_r).

Deviations from a vanilla GPT-2, with the source of each choice and constant:
- rotary position embeddings, base 100_000, no learned positions (RoFormer; base: nanochat)
- QK-norm: parameter-free RMSNorm of q and k per head (nanochat)
- sandwich norm in every block, h = n2(h + attn(n1(h))), h = n4(h + mlp(n3(h))), with
  trainable RMSNorm: a weight per channel, init 1, eps 1e-6, math in fp32 (Huginn)
- parameter-free RMSNorm after the token embedding (nanochat)
- MLP relu(x)^2 with 4x hidden width (Primer, So et al. 2021; nanochat); no biases (nanochat)
- GQA: n_kv_head divides n_head (Ainslie et al. 2023)
- untied wte / lm_head; vocab padded up to a multiple of 64, logits cropped (nanochat)
- logit softcap c * tanh(z / c), c = 15 by default (Gemma 2; nanochat's value)
- sliding-window attention, pattern tiled over the physical blocks of the repeated stack,
  its last block always long, short window = ceil(T/4/128)*128 = 768 at T = 2048 (nanochat,
  March 2026); prelude and coda attend to the full context (ours)
- value embeddings (on by default; BENCHMARKS.md): ResFormer (Zhou et al. 2024) with nanochat's gate
  3 * sigmoid(W x[..., :12]) per kv head, W ~ U(0, 0.02), on alternating physical blocks
  of the repeated stack, the last one always included
- init (see init_weights): wte std 1, zero output projections, lm_head std 0.001 (nanochat)
- looped: prelude / recur / coda and the norm after the recurrence (Huginn); inject is a
  Linear(2h -> h) on concat(e, s), identity on e at init, weight [I | 0] (Trelis Research's looped nanochat);
  random initial state truncated at 3 std (Huginn), std 1 to match e's unit RMS
- truncated BPTT: the first r - bptt_k iterations run under no_grad (Huginn)

Conventions: weights are fp32 and cast to common.COMPUTE_DTYPE at use (no autocast); norms,
logits and the loss run in fp32. Activations are (B, T, C) and attention heads (B, T, H, D).
Inference passes a kv_cache.KVCache to forward (prefill, decode, adaptive exit, warm start);
without one, forward is the training path.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat import flash_attention
from nanochat.common import COMPUTE_DTYPE
from nanochat.kv_cache import KL_EVERY, KL_PER_STATE
from nanochat.optim import MuonAdamW, OptimizerSpec
from nanochat.recurrence import resolve_r

ROTARY_BASE = 100_000    # nanochat
NORM_EPS = 1e-6          # Huginn's RMSNorm eps
VE_GATE_CHANNELS = 12    # value-embedding gate reads the first 12 channels (nanochat)
INIT_STATE_SEED = 1337   # fixed noise for init_state="randn" when no generator is given
NOISE_CHUNK = 128        # positions per independently seeded chunk of that fixed noise
VOCAB_MULTIPLE = 64


@dataclass
class GPTConfig:
    sequence_len: int = 2048      # training context: rotary table (10x this), FLOPs, long window
    vocab_size: int = 32768
    n_embd: int = 1280
    n_head: int = 10
    n_kv_head: int = 10
    arch: str = "looped"          # "looped" | "gpt"
    n_prelude: int = 2
    n_recur: int = 4              # blocks in the repeated stack (arch="gpt": all blocks)
    n_coda: int = 2
    window_pattern: str = "SSSL"  # over the physical blocks of the repeated stack, last one L
    short_window: int = 768       # keys an "S" block sees, itself included
    value_embeds: bool = True     # the defaults are base_train's recipe (tests/test_recipe.py holds them equal)
    init_state: str = "randn"     # "copy": s_0 = e | "randn": truncated normal noise
    init_state_std: float = 1.0   # e leaves a sandwich-normed block with RMS ~1: same scale
    inject_init: str = "identity"  # "identity": [I | 0], u = e | "sum": [I | I], u = e + s | "random": like c_q
    softcap: float = 15.0

    def __post_init__(self):
        def bad(field, expected):
            raise ValueError(f"GPTConfig.{field}={getattr(self, field)!r}: expected {expected}")
        if self.arch not in ("looped", "gpt"):
            bad("arch", "'looped' or 'gpt'")
        if self.arch == "gpt" and (self.n_prelude or self.n_coda):
            bad("n_prelude", "0 (and n_coda 0) for arch='gpt'; its blocks are n_recur")
        for f in ("sequence_len", "vocab_size", "n_embd", "n_head", "n_kv_head", "n_recur", "short_window"):
            if getattr(self, f) < 1:
                bad(f, ">= 1")
        for f in ("n_prelude", "n_coda"):
            if getattr(self, f) < 0:
                bad(f, ">= 0")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            bad("n_head", f"a divisor of n_embd={self.n_embd} giving an even head_dim")
        if self.n_head % self.n_kv_head:
            bad("n_kv_head", f"a divisor of n_head={self.n_head}")
        if not self.window_pattern or set(self.window_pattern.upper()) - set("SL"):
            bad("window_pattern", "a non-empty string of S and L")
        if self.init_state not in ("copy", "randn"):
            bad("init_state", "'copy' or 'randn'")
        if not self.init_state_std > 0:
            bad("init_state_std", "> 0")
        if self.inject_init not in ("identity", "sum", "random"):
            bad("inject_init", "'identity', 'sum' or 'random'")
        if not self.softcap > 0:
            bad("softcap", "> 0")
        if self.value_embeds and self.n_embd < VE_GATE_CHANNELS:
            bad("n_embd", f">= {VE_GATE_CHANNELS} with value_embeds")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @classmethod
    def from_size(cls, size, arch="looped", vocab_size=32768, sequence_len=2048, **overrides):
        """The one dial. Width = ceil(size*64/128)*128, heads of 128, short window a quarter
        of the context rounded up to 128. arch="gpt": `size` is also the depth."""
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"size={size!r}: expected an int >= 1")
        model_dim = math.ceil(size * 64 / 128) * 128
        kw = dict(sequence_len=sequence_len, vocab_size=vocab_size, n_embd=model_dim,
                  n_head=model_dim // 128, n_kv_head=model_dim // 128, arch=arch,
                  short_window=math.ceil(sequence_len / 4 / 128) * 128)
        if arch == "gpt":
            kw.update(n_prelude=0, n_recur=size, n_coda=0)
        return cls(**{**kw, **overrides})


# -----------------------------------------------------------------------------
# small pure functions

def rms_norm(x, weight=None):
    """RMSNorm in fp32, cast back to x's dtype; weight None = parameter-free."""
    w = None if weight is None else weight.float()
    return F.rms_norm(x.float(), (x.size(-1),), w, NORM_EPS).to(x.dtype)


def apply_rotary(x, cos, sin):
    """Rotate the channel pairs (x[..., j], x[..., j + D/2]) by position-dependent angles.
    x (B, T, H, D); cos, sin (1, T, 1, D/2)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def window_sizes(pattern, n_blocks, short_window):
    """Per physical block: short_window for S, None (full context) for L. The pattern is
    tiled over the blocks and the last block is always long."""
    pattern = pattern.upper()
    windows = [short_window if pattern[i % len(pattern)] == "S" else None for i in range(n_blocks)]
    windows[-1] = None
    return windows


def has_value_embed(i, n_blocks):
    """Alternating blocks, the last one always included (nanochat's rule)."""
    return i % 2 == (n_blocks - 1) % 2


def mean_keys(window, T):
    """Mean number of keys a query attends to over a causal sequence of length T."""
    w = T if window is None else min(window, T)
    return (w * (w + 1) / 2 + (T - w) * w) / T


# -----------------------------------------------------------------------------
# modules

class Linear(nn.Linear):
    """Bias-free Linear whose fp32 weight is cast to the activation dtype at use."""
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype))


class RMSNorm(nn.Module):
    """Trainable RMSNorm: a weight per channel (init 1 in init_weights), fp32 math."""
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return rms_norm(x, self.weight)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, value_embed):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C, kv_dim = config.n_embd, config.n_kv_head * config.head_dim
        self.c_q = Linear(C, config.n_head * self.head_dim)
        self.c_k = Linear(C, kv_dim)
        self.c_v = Linear(C, kv_dim)
        self.c_proj = Linear(config.n_head * self.head_dim, C)
        self.ve_gate = Linear(VE_GATE_CHANNELS, config.n_kv_head) if value_embed else None

    def forward(self, x, cos_sin, window, ve=None, kv=None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)     # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        if ve is not None:  # value residual: v += gate * ve, gate in (0, 3) per kv head
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm (commutes with the rotation)
        q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
        if kv is None:
            y = flash_attention.attention(q, k, v, window)  # (B, T, H, D)
        else:  # this layer's slot of a kv_cache.KVCache: write k, v at the new positions, attend to all
            y = kv.attend(q, k, v, window)
        return self.c_proj(y.reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    """Sandwich-norm block: the residual stream itself is normalised after each sub-layer."""
    def __init__(self, config, value_embed=False):
        super().__init__()
        self.n1, self.n2, self.n3, self.n4 = (RMSNorm(config.n_embd) for _ in range(4))
        self.attn = CausalSelfAttention(config, value_embed)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, window=None, ve=None, kv=None):
        x = self.n2(x + self.attn(self.n1(x), cos_sin, window, ve, kv))
        return self.n4(x + self.mlp(self.n3(x)))


# -----------------------------------------------------------------------------
# the model

class GPT(nn.Module):
    def __init__(self, config):
        """Shapes only: this runs on the meta device. All values are set in init_weights."""
        super().__init__()
        self.config = config
        C, looped = config.n_embd, config.arch == "looped"
        self.padded_vocab = math.ceil(config.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        self.wte = nn.Embedding(self.padded_vocab, C)
        self.prelude = nn.ModuleList(Block(config) for _ in range(config.n_prelude))
        # value embeddings and windows belong to physical blocks of the repeated stack:
        # every iteration of the loop sees the same ones
        ve_blocks = [i for i in range(config.n_recur)
                     if config.value_embeds and has_value_embed(i, config.n_recur)]
        self.recur = nn.ModuleList(Block(config, i in ve_blocks) for i in range(config.n_recur))
        self.coda = nn.ModuleList(Block(config) for _ in range(config.n_coda))
        self.windows = window_sizes(config.window_pattern, config.n_recur, config.short_window)
        kv_dim = config.n_kv_head * config.head_dim
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(self.padded_vocab, kv_dim) for i in ve_blocks})
        self.inject = Linear(2 * C, C) if looped else None
        self.norm_r = RMSNorm(C) if looped else None
        self.norm_f = RMSNorm(C)
        self.lm_head = Linear(C, self.padded_vocab)
        self.rotary_len = 10 * config.sequence_len  # generation may run past the training context
        half = config.head_dim // 2
        self.register_buffer("cos", torch.empty(1, self.rotary_len, 1, half), persistent=False)
        self.register_buffer("sin", torch.empty(1, self.rotary_len, 1, half), persistent=False)
        self._noise = {}  # device -> fixed init-state noise table (T, C), grown on demand

    @torch.no_grad()
    def init_weights(self, generator=None):
        """All initialisation (std = 1/sqrt(n_embd) via uniform(-sqrt(3)*std, sqrt(3)*std)):

        | parameter                          | init                                  |
        |------------------------------------|---------------------------------------|
        | wte                                | normal, std 1                         |
        | attn c_q, c_k, c_v; mlp c_fc       | uniform, std 1/sqrt(n_embd)           |
        | attn c_proj, mlp c_proj            | zeros (each block starts as n(h))     |
        | value embeds                       | uniform, std 1/sqrt(n_embd) (as c_v)  |
        | ve_gate                            | uniform(0, 0.02): gate ~1.5 at start  |
        | inject (C, 2C) over concat(e, s)   | [I | 0] "identity", [I | I] "sum",   |
        |                                    | "random": uniform, std 1/sqrt(2C)     |
        | every RMSNorm weight               | ones                                  |
        | lm_head                            | normal, std 0.001                     |
        | cos, sin buffers                   | rotary table, base 100_000, fp32      |
        """
        C = self.config.n_embd
        bound = math.sqrt(3) / math.sqrt(C)
        nn.init.normal_(self.wte.weight, 0.0, 1.0, generator=generator)
        for block in (*self.prelude, *self.recur, *self.coda):
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound, generator=generator)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02, generator=generator)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound, generator=generator)
        if self.inject is not None and self.config.inject_init == "random":  # Huginn: a plain matrix
            b = math.sqrt(3) / math.sqrt(2 * C)
            nn.init.uniform_(self.inject.weight, -b, b, generator=generator)
        elif self.inject is not None:
            eye = torch.eye(C, device=self.inject.weight.device)
            state_part = eye if self.config.inject_init == "sum" else torch.zeros_like(eye)
            self.inject.weight.copy_(torch.cat([eye, state_part], dim=1))  # columns: [e | s]
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.normal_(self.lm_head.weight, 0.0, 0.001, generator=generator)
        half = self.config.head_dim // 2
        inv_freq = ROTARY_BASE ** (-torch.arange(half, dtype=torch.float32, device=self.cos.device) / half)
        t = torch.arange(self.rotary_len, dtype=torch.float32, device=self.cos.device)
        angles = torch.outer(t, inv_freq)[None, :, None, :]  # (1, rotary_len, 1, D/2)
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())
        self._noise = {}

    # -------------------------------------------------------------------------
    # sizes

    def _default_r(self, r):
        if self.config.arch == "gpt":
            if r not in (None, 1):
                raise ValueError(f"arch='gpt' runs its {self.config.n_recur} blocks once: r must be 1 (or None), got r={r}")
            return 1
        r = resolve_r(self.config.arch) if r is None else r  # the recipe's eval r: a checkpoint's is the caller's to pass
        if not (isinstance(r, int) and r >= 1):
            raise ValueError(f"r={r!r}: expected an int >= 1")
        return r

    def num_params(self, r=None):
        """Parameter counts. embedding = wte + value embeds (lookups, no matmul);
        non_embedding = total - embedding (lm_head included); recur = the repeated stack plus
        inject; effective = the parameters a token passes through at r iterations:
        non_embedding + (r - 1) * recur (r defaults as in forward)."""
        r = self._default_r(r)
        count = lambda params: sum(p.numel() for p in params)
        total = count(self.parameters())
        embedding = count(self.wte.parameters()) + count(self.value_embeds.parameters())
        recur = count(self.recur.parameters()) + (self.inject.weight.numel() if self.inject is not None else 0)
        return dict(total=total, embedding=embedding, non_embedding=total - embedding,
                    recur=recur, effective=total - embedding + (r - 1) * recur)

    def _flops_parts(self):
        """Forward FLOPs per token: (run once, one iteration of the loop). Convention:
        - every matmul with a weight costs 2 FLOPs per weight element (multiply + add); the
          lm_head counts the padded vocab; embedding lookups count 0;
        - attention costs 4 * n_head * head_dim FLOPs per (query, key) pair it computes
          (q.k and the weighted sum of v), with the causal, windowed number of keys: the mean
          over a sequence_len sequence of min(i + 1, window). A causal kernel (FA3) does this
          much work; torch's FlopCounterMode instead counts dense T x T for SDPA on GPU and 0
          on CPU, and nanochat counts T keys per query, about twice ours for full layers;
        - norms, rotary, softmax, softcap and residual adds are not counted."""
        cfg = self.config
        T, attn_pair = cfg.sequence_len, 4 * cfg.n_head * cfg.head_dim

        def block(b, window):
            matmul = 2 * sum(m.weight.numel() for m in b.modules() if isinstance(m, Linear))
            return matmul + attn_pair * mean_keys(window, T)

        once = sum(block(b, None) for b in (*self.prelude, *self.coda)) + 2 * self.lm_head.weight.numel()
        per_iter = sum(block(b, w) for b, w in zip(self.recur, self.windows))
        if self.inject is not None:
            per_iter += 2 * self.inject.weight.numel()
        return once, per_iter

    def forward_flops(self, r=None):
        """Forward FLOPs per token at r iterations (r may be a float, e.g. E[r])."""
        once, per_iter = self._flops_parts()
        return once + (self._default_r(r) if r is None or isinstance(r, int) else r) * per_iter

    def estimate_flops(self, r=None, bptt_k=None, *, r_grad=None):
        """Training FLOPs per token: forward over r iterations, backward (2x forward) over
        the prelude, coda, head and the min(r, bptt_k) iterations that built a graph.
        For a sampled r pass expectations: r=E[r] and r_grad=E[min(r, k)] from
        recurrence.expected_recurrence (r_grad replaces min(r, bptt_k))."""
        if r is None or isinstance(r, int):
            r = self._default_r(r)
        if r_grad is None:
            r_grad = r if bptt_k is None else min(r, bptt_k)
        elif bptt_k is not None:
            raise ValueError("estimate_flops: give bptt_k or r_grad, not both")
        once, per_iter = self._flops_parts()
        return 3 * once + (r + 2 * r_grad) * per_iter

    # -------------------------------------------------------------------------
    # optimizer

    def optimizer_groups(self, spec):
        """Parameter groups by role, for MuonAdamW, with the rates of `spec` (optim.OptimizerSpec):
        - Muon: the 2-D matrices of every block and inject, one group per shape (so same-shape
          matrices can be stacked), with weight decay (cautious or plain) and NorMuon's
          variance normalisation when muon_beta2 > 0 (see optim.MuonAdamW);
        - AdamW, no weight decay: wte and value embeds (embedding_lr) and lm_head
          (unembedding_lr), both scaled by 1/sqrt(n_embd/768) as nanochat does;
        - AdamW "norms": every RMSNorm weight (init 1) at norm_lr. Adam's first steps are sign
          steps of size lr, so lr is the fraction of its value a norm weight moves per step:
          at nanochat's scalar lr 0.5 half the residual norms turned negative within 3 steps
          (BENCHMARKS.md, "norm-weight learning rate"); Huginn trains them at the global rate;
        - AdamW "gates": value-embedding gates, mixing weights read through a sigmoid, at
          scalar_lr (nanochat's lr for its mixing scalars)."""
        dmodel_scale = (self.config.n_embd / 768) ** -0.5
        embedding_lr, unembedding_lr, norm_lr, scalar_lr = spec.embedding_lr, spec.unembedding_lr, spec.norm_lr, spec.scalar_lr
        gates = [b.attn.ve_gate.weight for b in self.recur if b.attn.ve_gate is not None]
        gate_ids = {id(p) for p in gates}
        blocks = [*self.prelude, *self.recur, *self.coda]
        matrices = [p for b in blocks for p in b.parameters() if p.ndim == 2 and id(p) not in gate_ids]
        if self.inject is not None:
            matrices.append(self.inject.weight)
        norms = [m.weight for m in self.modules() if isinstance(m, RMSNorm)]
        adamw = dict(kind="adamw", betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
        groups = [
            dict(name="wte", params=list(self.wte.parameters()), lr=embedding_lr * dmodel_scale, **adamw),
            dict(name="value_embeds", params=list(self.value_embeds.parameters()), lr=embedding_lr * dmodel_scale, **adamw),
            dict(name="lm_head", params=list(self.lm_head.parameters()), lr=unembedding_lr * dmodel_scale, **adamw),
            dict(name="norms", params=norms, lr=norm_lr, **adamw),
            dict(name="gates", params=gates, lr=scalar_lr, **adamw),
        ]
        for shape in sorted({tuple(p.shape) for p in matrices}):
            groups.append(dict(name=f"matrices {shape[0]}x{shape[1]}", kind="muon", lr=spec.matrix_lr, momentum=0.95,
                               weight_decay=spec.weight_decay, beta2=spec.muon_beta2, cautious=spec.cautious_weight_decay,
                               params=[p for p in matrices if tuple(p.shape) == shape]))
        groups = [g for g in groups if g["params"]]
        grouped = [id(p) for g in groups for p in g["params"]]
        every = [id(p) for p in self.parameters()]
        assert len(grouped) == len(set(grouped)) and set(grouped) == set(every), \
            f"optimizer groups cover {len(set(grouped))} of {len(every)} parameters, {len(grouped) - len(set(grouped))} twice"
        return groups

    def setup_optimizer(self, spec=None, **overrides):
        """MuonAdamW over optimizer_groups. spec: an optim.OptimizerSpec (default: the recipe's,
        what base_train trains with); overrides: fields of it to change, by name."""
        spec = dataclasses.replace(spec or OptimizerSpec(), **overrides)
        return MuonAdamW(self.optimizer_groups(spec))  # MuonAdamW sets each group's initial_lr

    # -------------------------------------------------------------------------
    # forward

    def _fixed_noise(self, T, device):
        """(T, C) truncated-normal noise that depends on the position only: chunks of
        NOISE_CHUNK positions, each from its own seed, drawn on the CPU. So a position's
        initial state is the same at any T, batch size or device."""
        table = self._noise.get(device)
        if table is None or table.size(0) < T:
            C, std = self.config.n_embd, self.config.init_state_std
            chunks = []
            for c in range(math.ceil(T / NOISE_CHUNK)):
                g = torch.Generator().manual_seed(INIT_STATE_SEED + c)
                chunks.append(nn.init.trunc_normal_(torch.empty(NOISE_CHUNK, C), 0.0, std, -3 * std, 3 * std, generator=g))
            table = self._noise[device] = torch.cat(chunks).to(device)
        return table[:T]

    def _init_state(self, e, generator, pos=None):
        """s_0. "randn" with a generator: independent noise per element (training);
        without one: the fixed position-indexed noise, shared by the batch rows. pos: the
        tokens' absolute positions, a slice or (B, T) (a KV cache's), default 0..T-1."""
        if self.config.init_state == "copy":
            return e
        B, T, C = e.shape
        if generator is None:
            pos = slice(0, T) if pos is None else pos
            stop = pos.stop if isinstance(pos, slice) else int(pos.max()) + 1
            noise = self._fixed_noise(stop, e.device)[pos].expand(B, T, C)
        else:
            std = self.config.init_state_std
            noise = torch.empty(B, T, C, device=e.device)
            nn.init.trunc_normal_(noise, 0.0, std, -3 * std, 3 * std, generator=generator)
        return noise.to(e.dtype)

    def _rotary(self, pos):
        """(cos, sin) at absolute positions: a slice gives (1, T, 1, D/2), a (B, T) tensor (B, T, 1, D/2)."""
        if isinstance(pos, slice):
            return self.cos[:, pos].to(COMPUTE_DTYPE), self.sin[:, pos].to(COMPUTE_DTYPE)
        return self.cos[0, pos].to(COMPUTE_DTYPE), self.sin[0, pos].to(COMPUTE_DTYPE)  # (rotary_len, 1, D/2)[pos]

    def _run_recur(self, x, cos_sin, ves, kvs=None):
        """The repeated stack once; windows and value embeds by physical block index.
        kvs: one KV-cache slot per block (this iteration's), or None."""
        for i, block in enumerate(self.recur):
            x = block(x, cos_sin, self.windows[i], ves.get(i), None if kvs is None else kvs[i])
        return x

    def _iterate(self, e, s, cos_sin, ves, kvs=None):
        """One pass of the loop: s_i = recur(inject(concat(e, s_{i-1})))."""
        return self._run_recur(self.inject(torch.cat([e, s], dim=-1)), cos_sin, ves, kvs)  # (B, T, 2C) -> (B, T, C)

    def _head(self, y, at=None):
        """Logits (B, T, V) fp32; at: None, or (B,) positions, one per row: only those (B, 1, V)."""
        if at is not None:
            y = y[torch.arange(y.size(0), device=y.device), at].unsqueeze(1)
        logits = self.lm_head(self.norm_f(y))[..., :self.config.vocab_size].float()
        return self.config.softcap * torch.tanh(logits / self.config.softcap)

    def _coda_head(self, s, cos_sin, kvs=None, at=None):
        """Logits from a final recurrent state: norm_r, the coda (every position: its keys and
        values are cached), the head (at `at` only, see _head)."""
        y = self.norm_r(s)
        for i, block in enumerate(self.coda):
            y = block(y, cos_sin, kv=None if kvs is None else kvs[i])
        return self._head(y, at)

    def forward(self, idx, r=None, bptt_k=None, generator=None, kv_cache=None, logits_at=None):
        """Logits (B, T, vocab_size) in fp32, always.

        idx (B, T) token ids. r: loop iterations (default: the recipe's eval r, 4, for "looped";
        "gpt" accepts only None or 1). bptt_k: None = backprop through every iteration, else
        only the last bptt_k iterations build a graph; the first r - bptt_k run under no_grad
        (the prelude and inject still get gradients through e). generator: a torch.Generator
        on idx's device for init_state="randn"; None uses fixed noise, so the same input
        always gives the same logits. kv_cache: a kv_cache.KVCache for inference (prefill or
        decode, see _forward_cached); None is the training path. logits_at (with kv_cache only):
        None, or a (B,) long tensor of positions, one per row: the head runs there only and the
        logits are (B, 1, V) (a prefill that generates needs only each row's last token's)."""
        cfg = self.config
        r = self._default_r(r)
        if kv_cache is not None:
            if bptt_k is not None:
                raise ValueError("forward: bptt_k is a training option; it cannot be combined with kv_cache")
            return self._forward_cached(idx, r, generator, kv_cache, logits_at)
        if logits_at is not None:
            raise ValueError("forward: logits_at is an inference option; it needs a kv_cache")
        if bptt_k is not None and not (isinstance(bptt_k, int) and bptt_k >= 1):
            raise ValueError(f"bptt_k={bptt_k!r}: expected None or an int >= 1")
        B, T = idx.shape
        assert T <= self.rotary_len, f"sequence of {T} tokens is longer than the rotary table ({self.rotary_len})"
        cos_sin = self._rotary(slice(0, T))  # positions 0..T-1
        x = rms_norm(self.wte(idx).to(COMPUTE_DTYPE))
        ves = {int(i): emb(idx).to(COMPUTE_DTYPE) for i, emb in self.value_embeds.items()}  # per physical block
        if cfg.arch == "gpt":
            return self._head(self._run_recur(x, cos_sin, ves))
        e = x
        for block in self.prelude:
            e = block(e, cos_sin)
        s = self._init_state(e, generator)
        n_free = 0 if bptt_k is None else max(r - bptt_k, 0)
        with torch.no_grad():
            for _ in range(n_free):
                s = self._iterate(e, s, cos_sin, ves)
        for _ in range(r - n_free):
            s = self._iterate(e, s, cos_sin, ves)
        return self._coda_head(s, cos_sin)

    def _forward_cached(self, idx, r, generator, cache, at=None):
        """forward with a KV cache: each row of idx continues where the cache left it
        (rotary, fixed noise and windows at absolute positions) and its keys and values are
        written into the cache. Inference options read from the cache: warm_start (a lone new
        token starts from the previous token's final state) and exit_criterion (each token
        stops iterating once the change between successive iterations falls under
        exit_threshold: "kl" of the next-token distributions, which runs the coda and head
        every iteration, "state", the relative change of s, or "state+kl", either of the two
        with KL every other iteration, kv_cache.KL_EVERY). A token that stopped keeps its
        state; the cache gives its later slots the entries of the last iteration it ran. The
        iterations each token ran are left in cache.depth (B, T)."""
        B, T = idx.shape
        pos = cache.begin(B, T, r)  # slice(L, L + T), or (B, T) when rows differ in length
        cos_sin = self._rotary(pos)
        x = rms_norm(self.wte(idx).to(COMPUTE_DTYPE))
        ves = {int(i): emb(idx).to(COMPUTE_DTYPE) for i, emb in self.value_embeds.items()}
        depth = torch.zeros(B, T, dtype=torch.long, device=idx.device)
        if self.config.arch == "gpt":
            y = self._run_recur(x, cos_sin, ves, cache.recur_layers(0))
            cache.end(None, depth + 1, 1)
            return self._head(y, at)
        e = x
        for block, kv in zip(self.prelude, cache.prelude_layers):
            e = block(e, cos_sin, kv=kv)
        warm = cache.warm_start and T == 1 and cache.state is not None
        s = cache.selected_state().unsqueeze(1) if warm else self._init_state(e, generator, pos)
        criterion, active, logits, logp, fresh = cache.exit_criterion, None, None, None, False
        by_state, kl_every = criterion in ("state", "state+kl"), KL_EVERY.get(criterion)
        kl_threshold = cache.exit_threshold * (KL_PER_STATE if criterion == "state+kl" else 1)
        for it in range(r):
            cache.active = active  # rows that stopped: KVCache.attend keeps their last iteration's entries
            s_new = self._iterate(e, s, cos_sin, ves, cache.recur_layers(it))
            depth += 1 if active is None else active
            going = None  # tokens that go on: every test computed at this iteration says so
            if by_state and it > 0:
                change = (s_new - s).float().norm(dim=-1) / s_new.float().norm(dim=-1).clamp_min(1e-12)
                going = change >= cache.exit_threshold  # threshold 0 never stops a token
            s = s_new if active is None else torch.where(active.unsqueeze(-1), s_new, s)
            fresh = False  # logits hold the coda and head of the current s
            kl_check = kl_every and (it + 1) % kl_every == 0
            if kl_check and (going is None or (going if active is None else going & active).any()):
                # KL(p_prev || p_now) between checks; a stopped row's logits repeat, its coda entries too
                prev, logits, fresh = logp, self._coda_head(s, cos_sin, cache.coda_layers), True
                logp = F.log_softmax(logits, dim=-1)
                if prev is not None:
                    more = (prev.exp() * (prev - logp)).sum(-1).clamp_min(0) >= kl_threshold  # (B, T)
                    going = more if going is None else going & more
            if cache.caps is not None and it + 1 < r:  # rows of a served batch: each stops at its own r
                capped = (it + 1 < cache.caps).expand(B, T)
                going = capped if going is None else going & capped
            if going is not None:
                active = going if active is None else active & going
                if not active.any():
                    break
        cache.end(s[:, -1], depth, it + 1)
        if not fresh:
            return self._coda_head(s, cos_sin, cache.coda_layers, at)
        return logits if at is None else logits[torch.arange(B, device=logits.device), at].unsqueeze(1)

    def loss(self, idx, targets, r=None, bptt_k=None, reduction="mean", generator=None):
        """Cross-entropy in fp32, targets -1 ignored. reduction "mean" | "sum" | "none"
        ("none": per-token loss (B, T), 0 where ignored, for bits per byte)."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r}: expected 'mean', 'sum' or 'none'")
        logits = self.forward(idx, r=r, bptt_k=bptt_k, generator=generator)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, r=None, temperature=0.0, top_k=None, seed=42):
        """Naive reference decoding: a full forward per new token, no cache. Yields token
        ids one at a time. temperature 0 = greedy; sampling uses its own seeded generator."""
        assert isinstance(tokens, list) and tokens, "generate: tokens must be a non-empty list of ids"
        device = self.wte.weight.device
        rng = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        ids = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)
        for _ in range(max_tokens):
            logits = self.forward(ids, r=r)[:, -1, :]  # (1, V)
            if top_k is not None and top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if temperature > 0:
                nxt = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=rng)
            else:
                nxt = logits.argmax(dim=-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            yield nxt.item()
