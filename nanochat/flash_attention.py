"""
Causal attention with an optional sliding window: FlashAttention-3 where it can run,
torch SDPA everywhere else (CPU included). Both compute the same function.

    y = attention(q, k, v, window)   q (B, Tq, H, D), k and v (B, Tk, Hkv, D) -> (B, Tq, H, D)

- Causal, bottom-right aligned: the Tq queries are the last Tq of the Tk positions
  (Tq == Tk in training; a KV cache passes Tq < Tk and the same call just works).
- window=None is full context; window=w (an int >= 1) lets the query at position i see the
  keys j with i - w < j <= i: w keys, itself included. FA3 spells that window_size=(w-1, 0).
- GQA: H must be a multiple of Hkv (each kv head serves H/Hkv query heads).

FA3 is the Hopper build of Dao-AILab/flash-attention (`import flash_attn_interface`). It is
probed once, on the first call, and the choice is printed: only on an SM90 GPU and a bf16
compute dtype (FA3 has no fp32 kernels), and only for CUDA bf16 inputs at call time.
The SDPA path is the tested twin: it builds each sliding-window / offset mask once per
(Tq, Tk, window, device) and reuses it.
"""

import functools

import torch
import torch.nn.functional as F

from nanochat.common import COMPUTE_DTYPE, print0


@functools.cache
def _fa3():
    """The FA3 interface module, or None. Runs once; announces the choice."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        reason = "no Hopper (SM90) GPU"
    elif COMPUTE_DTYPE != torch.bfloat16:
        reason = f"compute dtype {COMPUTE_DTYPE}, FA3 needs bf16"
    else:
        try:
            import flash_attn_interface
        except ImportError:
            reason = "flash_attn_interface (FlashAttention-3) is not installed"
        else:
            print0("attention: FlashAttention-3")
            return flash_attn_interface
    print0(f"attention: torch SDPA ({reason})")
    return None


@functools.lru_cache(maxsize=32)
def causal_mask(Tq, Tk, window, device):
    """Bool (Tq, Tk), True = may attend. Query row a sits at absolute position Tk - Tq + a."""
    i = torch.arange(Tk - Tq, Tk, device=device)[:, None]  # (Tq, 1) query positions
    j = torch.arange(Tk, device=device)[None, :]           # (1, Tk) key positions
    keep = j <= i
    if window is not None:
        keep = keep & (j > i - window)
    return keep


def _sdpa(q, k, v, window):
    Tq, Tk = q.size(1), k.size(1)
    gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if Tq == Tk and (window is None or window >= Tk):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        mask = causal_mask(Tq, Tk, window, q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)  # (B, Tq, H, D)


def attention(q, k, v, window=None):
    """Causal (optionally windowed) attention; see the module docstring for the contract."""
    assert q.ndim == 4 and k.shape == v.shape and q.size(0) == k.size(0) and q.size(3) == k.size(3), \
        f"attention: bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}"
    assert q.size(1) <= k.size(1), f"attention: {q.size(1)} queries but only {k.size(1)} keys"
    assert q.size(2) % k.size(2) == 0, f"attention: {q.size(2)} query heads, {k.size(2)} kv heads"
    assert window is None or window >= 1, f"attention: window={window}, expected None or >= 1"
    fa3 = _fa3()
    if fa3 is not None and q.is_cuda and q.dtype == torch.bfloat16:
        left = -1 if window is None else window - 1
        out = fa3.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
        return out[0] if isinstance(out, tuple) else out  # older FA3 builds also return the LSE
    return _sdpa(q, k, v, window)
