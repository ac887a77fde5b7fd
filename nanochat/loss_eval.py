"""
Bits per byte: the vocabulary-independent validation metric.

Sum of next-token losses (nats) over all targets, divided by ln(2) times the number of
UTF-8 bytes those targets stand for. Special tokens (0 bytes) and ignored targets (-1) are
left out of both sums, so tokenizers of different vocab sizes compare fairly.
"""

import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps, token_bytes, r=None):
    """batches: an iterator of (inputs, targets); reduced over ranks under torchrun."""
    total_nats = torch.zeros((), dtype=torch.float64, device=token_bytes.device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    for _ in range(steps):
        x, y = next(batches)
        loss = model.loss(x, y, r=r, reduction="none").view(-1)  # (B*T,) nats
        y = y.reshape(-1)
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], torch.zeros_like(y, dtype=token_bytes.dtype))
        counted = nbytes > 0
        total_nats += (loss * counted).sum().double()
        total_bytes += nbytes.sum().long()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        raise ValueError("bits per byte over zero bytes: the validation batches hold no countable tokens")
    return total_nats.item() / (math.log(2) * total_bytes.item())


def unigram_bpb(train_batches, train_steps, val_batches, val_steps, token_bytes):
    """Bits per byte of a unigram model (token frequencies of the train batches, add-one
    smoothed) on the validation batches: the floor any trained model must beat."""
    vocab = token_bytes.numel()
    counts = torch.ones(vocab, dtype=torch.float64, device=token_bytes.device)
    for _ in range(train_steps):
        _, y = next(train_batches)
        y = y.reshape(-1)
        counts += torch.bincount(y[y >= 0], minlength=vocab).double()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    nll = -torch.log(counts / counts.sum())  # (V,) nats
    total_nats = torch.zeros((), dtype=torch.float64, device=token_bytes.device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
    for _ in range(val_steps):
        _, y = next(val_batches)
        y = y.reshape(-1)
        y = y[y >= 0]
        nbytes = token_bytes[y]
        total_nats += (nll[y] * (nbytes > 0)).sum()
        total_bytes += nbytes.sum().long()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    return total_nats.item() / (math.log(2) * total_bytes.item())
