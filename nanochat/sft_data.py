"""
SFT data: conversations rendered to (ids, mask) and packed into fixed rows of T+1 tokens,
best fit + pad, with a resumable state.

Rendering: `Tokenizer.render_conversation(conversation)`; mask = 1 on the tokens the assistant
writes. A conversation longer than a row is cropped to T+1 (and counted); one
with no supervised token left after the crop is skipped (and counted).

Packing (nanochat's "bestfit-pad"): a buffer holds the next `buffer_size` rendered
conversations. A row is filled by repeatedly taking the longest buffered conversation that
still fits in the room left; when none fits, the rest of the row is padded (BOS ids, mask 0)
instead of cropping a conversation, so no supervised token is ever thrown away. Every row
starts with a conversation, which starts with BOS.

Targets: inputs = row[:-1], targets = row[1:] where mask[1:] = 1, else -1. So only assistant
tokens get a loss: user turns, <|assistant_start|>, tool outputs, the BOS that opens the next
conversation and the padding all have target -1.

Ranks: rank r owns the conversations r, r + W, r + 2W, ... of the (already shuffled) dataset
and packs them into its own rows, so ranks never share a conversation and each renders only
its 1/W share (rendering runs at about 1M tokens/s on one core: rendering everything on every
rank would cost minutes per epoch). Ranks run out at slightly different batches: `next_batch`
raises StopIteration when this rank cannot fill a batch, and the training script ends the
epoch when any rank has (one small all-reduce per step), dropping the leftovers.

Resume: the state is the cursor (next conversation to render), the dataset indices of the
buffered conversations in buffer order, and the counters. Loading it re-renders those few
conversations, so the restored packer yields exactly the rows the original would have.
"""

import bisect

import torch


class SFTPacker:
    """Yields (inputs, targets), each (B, T) int64 on `device`, for one epoch of `dataset`
    (anything with len() and [i] -> conversation, e.g. a tasks.common.TaskMixture)."""

    def __init__(self, tokenizer, dataset, B, T, rank=0, world_size=1, device="cpu", buffer_size=100, state=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size}")
        if len(dataset) == 0:
            raise ValueError("SFT dataset is empty")
        self.tokenizer, self.dataset, self.B, self.T = tokenizer, dataset, B, T
        self.rank, self.world_size, self.device, self.buffer_size = rank, world_size, torch.device(device), buffer_size
        self.bos = tokenizer.get_bos_token_id()
        self.cursor = rank  # next dataset index to render (this rank's: rank mod world_size)
        self.buffer = []    # sorted by (length, -seq): (len, -seq, ids, mask, dataset index)
        self.seq = 0        # insertion counter: equal lengths are taken in insertion order
        self.stats = dict(rows=0, tokens=0, pad=0, supervised=0, conversations=0, cropped=0, skipped=0,
                          rendered=0, rendered_tokens=0)
        if state is not None:
            self.load_state_dict(state)

    # -------------------------------------------------------------------------
    # conversations

    def _render(self, index):
        """(ids, mask, cropped): the conversation's tokens, cut to one row."""
        ids, mask = self.tokenizer.render_conversation(self.dataset[index], max_tokens=10**9)
        n = self.T + 1
        return ids[:n], mask[:n], len(ids) > n

    def _add(self, ids, mask, index):
        bisect.insort(self.buffer, (len(ids), -self.seq, ids, mask, index))  # -seq: the earliest of equal lengths is rightmost
        self.seq += 1

    def _refill(self):
        while len(self.buffer) < self.buffer_size and self.cursor < len(self.dataset):
            index, self.cursor = self.cursor, self.cursor + self.world_size
            ids, mask, cropped = self._render(index)
            self.stats["rendered"] += 1
            if not any(mask):
                self.stats["skipped"] += 1  # nothing to learn within T+1 tokens
                continue
            self.stats["cropped"] += cropped
            self.stats["rendered_tokens"] += len(ids)
            self._add(ids, mask, index)

    # -------------------------------------------------------------------------
    # packing

    def _row(self):
        """One row (ids, mask) of T+1 tokens, or None when this rank's share is used up."""
        ids, mask, room = [], [], self.T + 1
        while room > 0:
            self._refill()
            i = bisect.bisect_right(self.buffer, (room, float("inf"))) - 1  # the longest with length <= room
            if i < 0:
                break
            _, _, conv_ids, conv_mask, _ = self.buffer.pop(i)
            ids += conv_ids
            mask += conv_mask
            room -= len(conv_ids)
            self.stats["conversations"] += 1
        if not ids:
            return None
        self.stats["rows"] += 1
        self.stats["tokens"] += self.T + 1
        self.stats["pad"] += room
        self.stats["supervised"] += sum(mask[1:])
        return ids + [self.bos] * room, mask + [0] * room

    def next_rows(self):
        """The next B rows, (ids, mask) lists of T+1. StopIteration when this rank's share of
        the epoch cannot fill them (the partial batch is dropped)."""
        rows = [self._row() for _ in range(self.B)]
        if rows[-1] is None:
            raise StopIteration
        return rows

    def next_batch(self):
        ids, mask = zip(*self.next_rows())
        ids = torch.tensor(ids, dtype=torch.long)    # (B, T+1)
        mask = torch.tensor(mask, dtype=torch.bool)  # (B, T+1)
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -1)
        inputs = ids[:, :-1]
        if self.device.type == "cuda":
            return (inputs.pin_memory().to(self.device, non_blocking=True),
                    targets.pin_memory().to(self.device, non_blocking=True))
        return inputs.to(self.device), targets.to(self.device)

    def __iter__(self):
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    def count_batches(self):
        """Exhaust this packer: the number of batches it yields from here to the end of its
        share (rows are packed, not turned into tensors). On a fresh packer this is the length
        of the epoch, known before training, so the lr schedule can end on the last step."""
        n = 0
        while True:
            try:
                self.next_rows()
            except StopIteration:
                return n
            n += 1

    @property
    def pad_fraction(self):
        return self.stats["pad"] / max(self.stats["tokens"], 1)

    # -------------------------------------------------------------------------
    # resume

    def state_dict(self):
        buffered = [entry[4] for entry in sorted(self.buffer, key=lambda e: -e[1])]  # insertion order
        return {"cursor": self.cursor, "buffer": buffered, "stats": dict(self.stats), "T": self.T,
                "buffer_size": self.buffer_size, "dataset_len": len(self.dataset),
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state):
        mine = {"T": self.T, "buffer_size": self.buffer_size, "dataset_len": len(self.dataset),
                "rank": self.rank, "world_size": self.world_size}
        saved = {k: state[k] for k in mine}
        if saved != mine:
            raise ValueError(f"SFT packer state was saved with {saved}, this packer has {mine}: "
                             "the rows after resume would differ")
        self.cursor, self.buffer, self.seq = state["cursor"], [], 0
        for index in state["buffer"]:
            ids, mask, _ = self._render(index)
            self._add(ids, mask, index)
        self.stats = dict(state["stats"])
