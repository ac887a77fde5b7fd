"""
The KV cache of a looped model, and the inference options its cached forward reads.

One tensor holds every slot: kv (n_slots, 2 [k, v], B, max_len, n_kv_head, head_dim), in
the compute dtype. The slots, in order:

    prelude blocks      n_prelude                  written once per token
    recurrent blocks    n_recur x n_iter           (block, iteration): slot (j, i) = block j at iteration i
    coda blocks         n_coda                     written once per token

mode="exact": n_iter = max_r, one slot per (physical block, iteration). A token's iteration i
attends to the earlier tokens' iteration-i keys, as in the full forward, so prefill plus
cached decoding computes the same logits as a full forward at every position
(tests/test_engine.py). Memory per token: (n_prelude + n_coda + n_recur * max_r) slots.

mode="shared" (Huginn's memory-saving cache): n_iter = 1, each recurrent block keeps one
slot that every iteration overwrites, so it ends up holding the entries of the last
iteration the token ran. A new token's iteration i then attends to earlier tokens' *final*
entries rather than their iteration-i ones: a different function from the trained model,
whose error against exact is measured by a test. A prefill is still exact (all of its
tokens run their iterations together). Memory per token: n_prelude + n_coda + n_recur slots,
independent of r.

Tokens that stop early (adaptive exit) follow Huginn's rule: a slot a token did not compute
holds the entries of the latest iteration of the same physical block that it did compute.
During the loop a stopped row's write copies slot (j, i-1) into slot (j, i) (exact) or keeps
the slot (shared); iterations nobody ran are filled the same way in `end`. Each row's
entries therefore depend on that row alone, so batched adaptive decoding equals decoding
one row at a time (Huginn's own batched cache lets short rows see long rows' entries).

Rows may sit at different positions (prompts of different lengths): each row has its own
length, rotary and windows are taken at absolute positions, and attention masks per row.
When every row has the same length (the usual case: one prompt, several samples) the
plain flash_attention.attention call runs, FlashAttention-3 included.

Serving many requests (nanochat/scheduler.py): `select` makes the next forwards compute a
contiguous range of rows only, each with its own iteration cap and exit threshold (a row past
its cap stops exactly as an adaptive exit would); `move_rows` compacts rows; `resize` makes room
when a request needs more rows, iterations (exact mode) or positions, and gives it back when
they have left (`bytes_for` tells the size beforehand, for the scheduler's memory budget).
"""

import weakref

import torch
import torch.nn.functional as F

from nanochat import flash_attention
from nanochat.common import COMPUTE_DTYPE

MODES = ("exact", "shared")
EXIT_CRITERIA = ("kl", "state", "state+kl")
# the chat surfaces' default (chat_web, chat_cli) and a threshold for each criterion, chosen by
# BENCHMARKS.md, "Adaptive exit criteria": the state change is free to compute, KL runs the coda and
# head at every iteration (slower than fixed r) but stops reasoning at the answer more reliably;
# "state+kl" decodes text as fast as the state alone and keeps the answers that the state loses
DEFAULT_EXIT_CRITERION = "state+kl"
SUGGESTED_THRESHOLD = {"state": 0.3, "kl": 1e-3, "state+kl": 0.3}
# "state+kl": a token stops when either test passes: the state change (every iteration, free) under
# the threshold, or KL under threshold * KL_PER_STATE, computed only every KL_EVERY iterations (against
# the distribution of the previous check) and only while some token is still going, so it costs a
# fraction of the coda and head that "kl" runs at every iteration. KL catches an answer that has settled
# while the state still moves (a state exit alone can then iterate past it); the ratio makes the
# suggested 0.3 mean KL < 1e-3, and keeps one number a request can set (0 still never stops a token).
KL_EVERY = {"kl": 1, "state+kl": 2}
KL_PER_STATE = SUGGESTED_THRESHOLD["kl"] / SUGGESTED_THRESHOLD["state"]


class _Slot:
    """One layer's view of the cache, handed to CausalSelfAttention as `kv`. It holds the cache
    by a weak reference: a strong one would make a cycle (cache -> slots -> cache) that only the
    cyclic garbage collector frees, and it runs by object counts, not bytes, so caches of
    hundreds of MB piled up (an eval making one cache per batch grew to 23 GB)."""
    __slots__ = ("cache", "index", "prev", "recurrent")

    def __init__(self, cache, index, prev, recurrent):
        self.cache, self.index, self.prev, self.recurrent = weakref.ref(cache), index, prev, recurrent

    def attend(self, q, k, v, window):
        return self.cache()._attend(self, q, k, v, window)


class KVCache:
    """Keys and values of B rows, plus what the cached forward reads and leaves behind:

    lengths  list of B ints, tokens cached per row
    state    (B, C) final recurrent state of each row's last token (for warm_start), or None
    depth    (B, T) iterations each token of the last forward ran, or None
    active   set by the model during its loop: (B, T) bool, False for tokens that stopped
    rows     slice: the rows the next forward computes (all, unless `select` narrowed it)
    caps     None, or (b, 1) long: each selected row's own iteration count (see `select`)

    Options: mode "exact" | "shared" (module docstring); max_r the most iterations a forward
    may run (exact mode keeps a slot for each); warm_start: a lone new token starts from the
    previous token's final state instead of init_state (Huginn's "continuous compute"; a
    prefill starts as in training); exit_criterion None | "kl" | "state" | "state+kl" with
    exit_threshold >= 0: a token stops after iteration i >= 2 once the change from iteration i-1 is
    below the threshold ("state+kl": see KL_EVERY; threshold 0 never stops, so it computes exactly
    the fixed-r function)."""

    def __init__(self, model, batch_size, max_len, max_r=1, mode="exact", warm_start=False,
                 exit_criterion=None, exit_threshold=0.0, device=None, dtype=COMPUTE_DTYPE):
        cfg = model.config
        if mode not in MODES:
            raise ValueError(f"KVCache mode={mode!r}: expected one of {MODES}")
        if exit_criterion is not None and exit_criterion not in EXIT_CRITERIA:
            raise ValueError(f"exit_criterion={exit_criterion!r}: expected None or one of {EXIT_CRITERIA}")
        if not exit_threshold >= 0:
            raise ValueError(f"exit_threshold={exit_threshold!r}: expected >= 0")
        if not (isinstance(max_r, int) and max_r >= 1):
            raise ValueError(f"max_r={max_r!r}: expected an int >= 1")
        if cfg.arch == "gpt" and (warm_start or exit_criterion is not None or max_r != 1):
            raise ValueError("arch='gpt' has no loop: no warm_start, exit_criterion, or max_r other than 1")
        if not 1 <= max_len <= model.rotary_len:
            raise ValueError(f"KVCache max_len={max_len}: expected 1..{model.rotary_len} (the rotary table)")
        self.mode, self.max_r, self.warm_start = mode, max_r, warm_start
        self.exit_criterion, self.exit_threshold = exit_criterion, exit_threshold
        self.batch_size, self.max_len, self.rotary_len = batch_size, max_len, model.rotary_len
        self.n_prelude, self.n_recur, self.n_coda = len(model.prelude), len(model.recur), len(model.coda)
        self.n_iter = max_r if mode == "exact" else 1
        n_slots = self.n_prelude + self.n_recur * self.n_iter + self.n_coda
        device = model.lm_head.weight.device if device is None else device
        self.kv = torch.zeros(n_slots, 2, batch_size, max_len, cfg.n_kv_head, cfg.head_dim, dtype=dtype, device=device)
        self.lengths = [0] * batch_size
        self.state = self.depth = self.active = self.caps = None
        self.rows = slice(0, batch_size)
        self._build_slots()
        self._idx = self._pos = None

    def _build_slots(self):
        self.prelude_layers = [_Slot(self, i, i, False) for i in range(self.n_prelude)]
        self._recur = [[_Slot(self, self._recur_slot(j, i), self._recur_slot(j, max(i - 1, 0)), True)
                        for j in range(self.n_recur)] for i in range(self.n_iter)]
        first_coda = self.n_prelude + self.n_recur * self.n_iter
        self.coda_layers = [_Slot(self, first_coda + i, first_coda + i, False) for i in range(self.n_coda)]

    def _recur_slot(self, block, iteration):
        return self.n_prelude + block * self.n_iter + iteration  # (block, iteration) order

    def recur_layers(self, iteration):
        """The recurrent blocks' slots for this iteration (all iterations share one in shared mode)."""
        assert iteration < self.max_r or self.mode == "shared", \
            f"iteration {iteration} of a forward, but this exact cache holds max_r={self.max_r}"
        return self._recur[iteration if self.mode == "exact" else 0]

    def recur_view(self):
        """(n_recur, n_iter, 2, B, max_len, n_kv_head, head_dim): the (block, iteration) layout."""
        p, n = self.n_prelude, self.n_recur * self.n_iter
        return self.kv[p:p + n].view(self.n_recur, self.n_iter, *self.kv.shape[1:])

    @property
    def nbytes(self):
        return self.kv.numel() * self.kv.element_size()

    # -------------------------------------------------------------------------
    # one forward: begin -> the layers attend -> end

    def select(self, lo, hi, caps=None, exit_criterion=None, thresholds=None):
        """The next forwards compute rows lo..hi-1 of this cache only. caps: None or one int per
        selected row, its own iteration count (the forward's r must be their max; a row reaching
        its cap stops as an adaptive exit would, so it computes its fixed-r function).
        exit_criterion None or one of EXIT_CRITERIA with thresholds, one float >= 0 per selected row
        (these replace the exit options the cache was built with)."""
        assert 0 <= lo < hi <= self.batch_size, f"select({lo}, {hi}) in a cache of {self.batch_size} rows"
        assert exit_criterion is None or exit_criterion in EXIT_CRITERIA, exit_criterion
        dev = self.kv.device
        self.rows = slice(lo, hi)
        self.caps = None if caps is None else torch.tensor(caps, device=dev)[:, None]  # (b, 1)
        self.exit_criterion = exit_criterion
        self.exit_threshold = 0.0 if thresholds is None else torch.tensor(thresholds, device=dev)[:, None]

    def begin(self, B, T, r):
        """Called by the model's cached forward. Returns the new tokens' absolute positions:
        slice(L, L + T) when every selected row holds L tokens, else a (B, T) tensor."""
        lo, hi = self.rows.start, self.rows.stop
        assert B == hi - lo, f"a batch of {B} rows for the {hi - lo} selected rows of this cache"
        assert r <= self.max_r or self.mode == "shared", f"r={r} but this exact cache holds max_r={self.max_r}"
        assert self.caps is None or int(self.caps.max()) == r, f"r={r} but the rows' caps are {self.caps.view(-1).tolist()}"
        lengths = self.lengths[lo:hi]
        self._end = max(lengths) + T
        assert self._end <= self.max_len, f"cache full: {max(lengths)} + {T} tokens > max_len={self.max_len}"
        if len(set(lengths)) == 1:
            L = lengths[0]
            self._pos, self._rows = slice(L, L + T), self.rows
        else:
            dev = self.kv.device
            self._pos = torch.tensor(lengths, device=dev)[:, None] + torch.arange(T, device=dev)  # (B, T)
            self._rows = torch.arange(lo, hi, device=dev)[:, None]
        self._idx = (Ellipsis, self._rows, self._pos, slice(None), slice(None))  # (..., B, T, Hkv, D) -> the new entries
        self._masks = {}
        return self._pos

    def _attend(self, slot, q, k, v, window):
        kbuf, vbuf = self.kv[slot.index, 0], self.kv[slot.index, 1]  # (B, max_len, Hkv, D)
        if slot.recurrent and self.active is not None:  # stopped tokens keep their last iteration's entries
            keep = self.active[:, :, None, None]  # (B, T, 1, 1)
            k = torch.where(keep, k, self.kv[slot.prev, 0][self._idx])
            v = torch.where(keep, v, self.kv[slot.prev, 1][self._idx])
        kbuf[self._idx] = k
        vbuf[self._idx] = v
        k, v = kbuf[self.rows, :self._end], vbuf[self.rows, :self._end]
        if isinstance(self._pos, slice):
            return flash_attention.attention(q, k, v, window)
        return _masked_attention(q, k, v, self._mask(window))

    def _mask(self, window):
        """(B, 1, T, end) bool: the query at absolute position p sees keys p - window < j <= p."""
        if window not in self._masks:
            p = self._pos[:, None, :, None]                           # (B, 1, T, 1)
            j = torch.arange(self._end, device=self.kv.device)        # (end,)
            keep = j <= p
            if window is not None:
                keep = keep & (j > p - window)
            self._masks[window] = keep
        return self._masks[window]

    def end(self, state, depth, iterations_run):
        """Called at the end of the cached forward: fill the slots of iterations nobody ran
        (exact mode, Huginn's rule) and advance every row."""
        if self.mode == "exact" and self.n_recur:
            view = self.recur_view()
            for i in range(iterations_run, self.n_iter):
                view[:, i][self._idx] = view[:, i - 1][self._idx]
        T, sel = depth.size(1), self.rows
        self.lengths[sel] = [L + T for L in self.lengths[sel]]
        if state is not None:
            if self.state is None:
                self.state = state.new_zeros(self.batch_size, state.size(-1))
            self.state[sel] = state
        self.depth, self.active = depth, None

    def selected_state(self):
        """(b, C) the selected rows' final states (warm start reads it)."""
        return self.state[self.rows]

    # -------------------------------------------------------------------------

    def move_rows(self, src, dst):
        """Row src[i] moves to row dst[i] (entries, length, state); the scheduler keeps the rows it
        runs together contiguous. Sources are read before anything is written."""
        if not src:
            return
        n = max(self.lengths[b] for b in src)
        si, di = torch.tensor(src, device=self.kv.device), torch.tensor(dst, device=self.kv.device)
        self.kv[:, :, di, :n] = self.kv[:, :, si, :n]
        lengths = [self.lengths[b] for b in src]
        for b, L in zip(dst, lengths):
            self.lengths[b] = L
        if self.state is not None:
            self.state[di] = self.state[si]

    @staticmethod
    def bytes_for(model, batch_size, max_len, max_r, mode="exact", dtype=COMPUTE_DTYPE):
        """The bytes a cache of these sizes holds, without making one (the scheduler's budget)."""
        cfg = model.config
        n_slots = len(model.prelude) + len(model.recur) * (max_r if mode == "exact" else 1) + len(model.coda)
        return n_slots * 2 * batch_size * max_len * cfg.n_kv_head * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()

    def resize(self, batch_size=None, max_r=None, max_len=None):
        """Reallocate in place to these sizes (None = as now), keeping every entry that still
        fits: rows below batch_size, positions below max_len, iterations below max_r (exact
        mode; new iteration slots start as copies of the last, Huginn's rule for iterations not
        run). The scheduler grows the cache when a request needs more rows, iterations or
        positions, and shrinks it when the rows that needed them have left. While the entries
        are copied, the old and the new tensor both exist."""
        B = self.batch_size if batch_size is None else batch_size
        max_r = self.max_r if max_r is None else max_r
        L = self.max_len if max_len is None else max_len
        if (B, max_r, L) == (self.batch_size, self.max_r, self.max_len):
            return
        assert B >= 1 and max_r >= 1 and 1 <= L <= self.rotary_len, f"resize to {B} rows, r {max_r}, {L} positions"
        p, c, n_old = self.n_prelude, self.n_coda, self.n_iter
        n_iter = max_r if self.mode == "exact" else 1
        b, l, k = min(B, self.batch_size), min(L, self.max_len), min(n_iter, n_old)
        shape = list(self.kv.shape)
        shape[0], shape[2], shape[3] = p + self.n_recur * n_iter + c, B, L
        kv = self.kv.new_zeros(shape)
        kv[:p, :, :b, :l] = self.kv[:p, :, :b, :l]
        kv[shape[0] - c:, :, :b, :l] = self.kv[self.kv.shape[0] - c:, :, :b, :l]
        view = kv[p:p + self.n_recur * n_iter].view(self.n_recur, n_iter, *shape[1:])
        old = self.recur_view()
        view[:, :k, :, :b, :l] = old[:, :k, :, :b, :l]
        view[:, k:, :, :b, :l] = old[:, k - 1:k, :, :b, :l]
        if self.state is not None:
            state = self.state.new_zeros(B, self.state.size(-1))
            state[:b] = self.state[:b]
            self.state = state
        self.kv, self.lengths = kv, (self.lengths + [0] * B)[:B]
        self.batch_size, self.max_r, self.n_iter, self.max_len = B, max_r, n_iter, L
        self.rows, self.caps = slice(0, B), None
        self._build_slots()


def _masked_attention(q, k, v, mask):
    """SDPA with an explicit (B, 1, Tq, Tk) mask: rows at different positions."""
    gqa = q.size(2) != k.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)  # (B, Tq, H, D)
