"""
Distributed, resumable, BOS-aligned best-fit packing dataloader for pretraining.

Sharding: documents are numbered in file/row-group order; rank r owns every document whose
index within its row group is congruent to r mod world_size, so ranks see disjoint documents
even when a dataset has fewer row groups than ranks.

Packing: each row of T+1 tokens starts with a document (which starts with BOS). The row is
filled by repeatedly taking the longest buffered document that still fits ("best fit").
When none fits, the shortest buffered document is cropped to fill the row exactly and its
tail is dropped, so no row ever straddles a BOS-less fragment. `waste` counts the dropped
tokens: every document token appears at most once per epoch.

Resume: the state is the cursor (epoch, next row group) plus the identities (row group,
document) of the buffered documents, in buffer order; loading it re-reads and re-tokenizes
those few documents, so the restarted loader yields exactly the batches the original would
have yielded next.
"""

import bisect

import torch

from nanochat.dataset import open_shard, read_row_group, split_files


class DataLoader:
    """Yields (inputs, targets), each (B, T) int64 on `device`; targets are inputs shifted by one."""

    def __init__(self, tokenizer, data_dir, split, B, T, rank=0, world_size=1, device="cpu",
                 buffer_docs=1000, tokenizer_threads=4, state=None):
        self.tokenizer, self.B, self.T = tokenizer, B, T
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.buffer_docs, self.tokenizer_threads = buffer_docs, tokenizer_threads
        self.bos = tokenizer.get_bos_token_id()
        self.files = split_files(data_dir, split)
        # every (file, row group) in order; the unit the cursor walks over
        self.row_groups = []
        for path in self.files:
            pf = open_shard(path)
            self.row_groups += [(path, rg) for rg in range(pf.num_row_groups)]
        self._open = {}  # path -> ParquetFile
        self.epoch, self.cursor = 0, 0
        self.buffer = []  # sorted by (length, seq): entries (len, seq, tokens, (rg_ordinal, doc_index))
        self.seq = 0      # insertion counter: breaks ties between equal lengths deterministically
        self.tokens_read = 0
        self.tokens_wasted = 0
        if state is not None:
            self.load_state_dict(state)

    # -------------------------------------------------------------------------
    # reading documents

    def _texts(self, ordinal):
        path, rg = self.row_groups[ordinal]
        if path not in self._open:
            self._open[path] = open_shard(path)
        return read_row_group(self._open[path], path, rg)

    def _add(self, tokens, ref):
        bisect.insort(self.buffer, (len(tokens), self.seq, tokens, ref))
        self.seq += 1

    def _refill(self):
        """Read row groups until the buffer holds buffer_docs documents (wrapping epochs)."""
        empty_passes = 0
        while len(self.buffer) < self.buffer_docs:
            if self.cursor == len(self.row_groups):
                self.epoch, self.cursor = self.epoch + 1, 0
                empty_passes += 1
                if empty_passes > 1 and not self.buffer:
                    raise ValueError(f"rank {self.rank}/{self.world_size} owns no documents in {self.files}")
            ordinal = self.cursor
            texts = self._texts(ordinal)[self.rank::self.world_size]
            docs = self.tokenizer.encode(texts, prepend=self.bos, num_threads=self.tokenizer_threads)
            for i, tokens in enumerate(docs):
                self._add(tokens, (ordinal, self.rank + i * self.world_size))
                self.tokens_read += len(tokens)
            self.cursor += 1

    def _take(self, index):
        return self.buffer.pop(index)[2]

    # -------------------------------------------------------------------------
    # packing

    def _row(self):
        row = []
        room = self.T + 1
        while room > 0:
            self._refill()
            # the longest document with length <= room
            i = bisect.bisect_right(self.buffer, (room, float("inf"))) - 1
            if i >= 0:
                tokens = self._take(i)
            else:  # nothing fits: crop the shortest document, drop its tail
                tokens = self._take(0)
                self.tokens_wasted += len(tokens) - room
                tokens = tokens[:room]
            row += tokens
            room -= len(tokens)
        return row

    def next_batch(self):
        rows = torch.tensor([self._row() for _ in range(self.B)], dtype=torch.long)  # (B, T+1)
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with compute
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        else:
            rows = rows.to(self.device)
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

    @property
    def waste(self):
        """Fraction of tokens read that were cropped away (buffered ones count as not yet read)."""
        buffered = sum(entry[0] for entry in self.buffer)
        consumed = self.tokens_read - buffered
        return self.tokens_wasted / max(consumed, 1)

    # -------------------------------------------------------------------------
    # resume

    def state_dict(self):
        refs = [entry[3] for entry in sorted(self.buffer, key=lambda e: e[1])]  # insertion order
        return {"epoch": self.epoch, "cursor": self.cursor, "buffer": refs,
                "rank": self.rank, "world_size": self.world_size,
                "tokens_read": self.tokens_read, "tokens_wasted": self.tokens_wasted}

    def load_state_dict(self, state):
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(f"dataloader state is for rank {state['rank']}/{state['world_size']}, "
                             f"this is rank {self.rank}/{self.world_size}")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.buffer, self.seq = [], 0
        by_rg = {}
        for ordinal, doc in state["buffer"]:
            by_rg.setdefault(ordinal, []).append(doc)
        tokens_of = {}
        for ordinal, docs in by_rg.items():
            texts = self._texts(ordinal)
            for doc, tokens in zip(docs, self.tokenizer.encode([texts[d] for d in docs], prepend=self.bos)):
                tokens_of[(ordinal, doc)] = tokens
        for ref in state["buffer"]:
            self._add(tokens_of[tuple(ref)], tuple(ref))
        self.tokens_read, self.tokens_wasted = state["tokens_read"], state["tokens_wasted"]
