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
probed once, at import (a constant, so torch.compile sees no Python branching): only on an
SM90 GPU with a bf16 compute dtype (FA3 has no fp32 kernels), and used only for CUDA bf16
inputs. `BACKEND` names the choice and why; scripts print it with `announce()`.
The SDPA path is the tested twin: it builds each sliding-window / offset mask once per
(Tq, Tk, window, device) and reuses it (under torch.compile the mask is rebuilt in-graph).
"""

import functools

import torch
import torch.nn.functional as F

from nanochat.common import COMPUTE_DTYPE, print0


def _probe_fa3():
    """(the FA3 interface module or None, why). Runs once, at import: a constant."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        return None, "torch SDPA: no Hopper (SM90) GPU"
    if COMPUTE_DTYPE != torch.bfloat16:
        return None, f"torch SDPA: compute dtype {COMPUTE_DTYPE}, FA3 needs bf16"
    try:
        import flash_attn_interface
    except ImportError:
        return None, "torch SDPA: flash_attn_interface (FlashAttention-3) is not installed"
    return flash_attn_interface, "FlashAttention-3"


_FA3, BACKEND = _probe_fa3()


def announce():
    """Print which attention runs; scripts call this once at startup."""
    print0(f"attention: {BACKEND}")


def _build_mask(Tq, Tk, window, device):
    """Bool (Tq, Tk), True = may attend. Query row a sits at absolute position Tk - Tq + a."""
    i = torch.arange(Tk - Tq, Tk, device=device)[:, None]  # (Tq, 1) query positions
    j = torch.arange(Tk, device=device)[None, :]           # (1, Tk) key positions
    keep = j <= i
    if window is not None:
        keep = keep & (j > i - window)
    return keep


causal_mask = functools.lru_cache(maxsize=32)(_build_mask)  # built once per (Tq, Tk, window, device)


def _sdpa(q, k, v, window):
    Tq, Tk = q.size(1), k.size(1)
    gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    if Tq == Tk and (window is None or window >= Tk):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif Tq == 1:  # one query (decoding) sees every key, or the window's last ones: no mask to build
        if window is not None and window < Tk:
            k, v = k[:, :, Tk - window:], v[:, :, Tk - window:]
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    else:
        build = _build_mask if torch.compiler.is_compiling() else causal_mask  # a graph can't keep a Python cache
        mask = build(Tq, Tk, window, q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)  # (B, Tq, H, D)


def attention(q, k, v, window=None):
    """Causal (optionally windowed) attention; see the module docstring for the contract."""
    assert q.ndim == 4 and k.shape == v.shape and q.size(0) == k.size(0) and q.size(3) == k.size(3), \
        f"attention: bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}"
    assert q.size(1) <= k.size(1), f"attention: {q.size(1)} queries but only {k.size(1)} keys"
    assert q.size(2) % k.size(2) == 0, f"attention: {q.size(2)} query heads, {k.size(2)} kv heads"
    assert window is None or window >= 1, f"attention: window={window}, expected None or >= 1"
    if _FA3 is not None and q.is_cuda and q.dtype == torch.bfloat16:
        left = -1 if window is None else window - 1
        out = _FA3.flash_attn_func(q, k, v, causal=True, window_size=(left, 0))
        return out[0] if isinstance(out, tuple) else out  # older FA3 builds also return the LSE
    return _sdpa(q, k, v, window)
