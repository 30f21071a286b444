"""Padding-free batches: a chunk's sequences packed without padding, attention kept within each sequence.

`pack` lays a right-padded [B, L] batch out in rows, with position ids that restart at every sequence
(at the model's first position: 0 for BERT, padding_idx + 1 for RoBERTa and XLM-R):
- one row of its T real tokens in input order (`row_length=None`), with the cumulative lengths
  flash-attention's varlen kernel takes;
- or rows of `row_length` positions (the batch's longest sequence), shorter sequences sharing a row,
  filled first fit, longest first (`Rows`). Attention then runs on [R, row_length] with a block-diagonal
  mask per row: no position computes padding it does not need, and no score is wider than the padded
  batch's. This is the layout for SDPA and eager attention, on CPU or GPU.
`attention_kwargs` is what the encoder's attention needs to keep each sequence to itself: cu_seq_lens /
max_length for transformers' flash-attention path, or a block-diagonal [R, 1, C, C] mask, which
transformers hands to SDPA or eager attention as it is. `pool_packed` pools the packed output per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


class Rows:
    """Rows of `capacity` positions filled first fit: fed longest first, this is first-fit decreasing
    (at most 11/9 of the fewest rows, plus one). `GradCache` counts a chunk's positions with it, and
    `pack` lays the chunk out with it, so both agree on the rows."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.free: list[int] = []  # free positions per row

    def fits(self, length: int) -> bool:
        """Whether a sequence of `length` goes into a row already open."""
        return any(free >= length for free in self.free)

    def place(self, length: int) -> tuple[int, int]:
        """(row, offset) of a new sequence of `length` tokens (at most the capacity)."""
        if length > self.capacity:
            raise ValueError(f"a sequence of {length} tokens does not fit rows of {self.capacity}")
        for row, free in enumerate(self.free):
            if free >= length:
                self.free[row] = free - length
                return row, self.capacity - free
        self.free.append(self.capacity - length)
        return len(self.free) - 1, 0

    @property
    def positions(self) -> int:
        return len(self.free) * self.capacity


def longest_first(lengths: list[int]) -> list[int]:
    """The order sequences are placed in rows: longest first, ties in input order (as GradCache sorts)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def packed_rows(lengths: list[int], row_length: int = 0) -> Rows:
    """The rows sequences of these lengths fill, placed as `pack` does: rows of `row_length` positions
    (0: as long as the longest)."""
    rows = Rows(row_length or max(lengths))
    for i in longest_first(lengths):
        rows.place(lengths[i])
    return rows


@dataclass
class Packed:
    """One chunk packed: T real tokens of B sequences in R rows of C positions."""

    input_ids: Tensor  # [R, C]
    position_ids: Tensor  # [R, C]: first_position.. within each sequence
    segment: Tensor  # [R, C]: the sequence of each position; filler of row r is -1 - r (it sees only itself)
    index: Tensor  # [T]: flat position (row * C + column) of each real token, sequence by sequence
    sequence: Tensor  # [T]: the input row each of those tokens comes from
    cu_seq_lens: Tensor  # [B + 1] int32: sequence b is tokens cu_seq_lens[b]:cu_seq_lens[b + 1] of `index`
    max_length: int  # the longest sequence

    @property
    def num_sequences(self) -> int:
        return len(self.cu_seq_lens) - 1


def pack(input_ids: Tensor, attention_mask: Tensor, first_position: int = 0, row_length: int | None = None
         ) -> Packed:
    """[B, L] ids and right-padding mask -> packed rows (one row in input order when row_length is None)."""
    lengths = attention_mask.sum(1)
    device = lengths.device
    starts, row_of = place_sequences(lengths.tolist(), row_length)
    num_rows = max(row_of) + 1
    width = int(lengths.sum()) if row_length is None else row_length
    sequence = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    first = lengths.cumsum(0) - lengths  # each sequence's first token among the T
    within = torch.arange(len(sequence), device=device) - first[sequence]
    row_start = torch.tensor(row_of, device=device) * width + torch.tensor(starts, device=device)
    index = row_start[sequence] + within
    ids = input_ids.new_zeros(num_rows * width).index_copy_(0, index, input_ids[attention_mask.bool()])
    positions = torch.full((num_rows * width,), first_position, dtype=torch.long, device=device)
    positions.index_copy_(0, index, within + first_position)
    segment = -1 - torch.arange(num_rows, device=device).repeat_interleave(width)
    segment.index_copy_(0, index, sequence)
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return Packed(ids.view(num_rows, width), positions.view(num_rows, width), segment.view(num_rows, width),
                  index, sequence, cu_seq_lens, int(lengths.max()))


def place_sequences(lengths: list[int], row_length: int | None) -> tuple[list[int], list[int]]:
    """(offset in its row, row) of each sequence: one row in input order, or `Rows` longest first."""
    if row_length is None:
        offsets = [0]
        for length in lengths[:-1]:
            offsets.append(offsets[-1] + length)
        return offsets, [0] * len(lengths)
    rows = Rows(row_length)
    offsets, row_of = [0] * len(lengths), [0] * len(lengths)
    for i in longest_first(lengths):
        row_of[i], offsets[i] = rows.place(lengths[i])
    return offsets, row_of


def attention_kwargs(packed: Packed, attn_implementation: str, dtype: torch.dtype) -> dict:
    """The encoder keyword arguments that restrict attention to each packed sequence."""
    if attn_implementation in FLASH_IMPLEMENTATIONS:
        if packed.input_ids.shape[0] != 1:
            raise ValueError("flash-attention's varlen path takes one packed row (pack with row_length=None)")
        return {"cu_seq_lens_q": packed.cu_seq_lens, "cu_seq_lens_k": packed.cu_seq_lens,
                "max_length_q": packed.max_length, "max_length_k": packed.max_length}
    same = packed.segment[:, :, None] == packed.segment[:, None, :]  # [R, C, C]: attend within the sequence
    if attn_implementation != "eager":
        return {"attention_mask": same[:, None]}  # SDPA takes a boolean mask (True: attend)
    additive = torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill_(~same, torch.finfo(dtype).min)
    return {"attention_mask": additive[:, None]}  # eager attention adds its mask to the scores


def pool_packed(hidden: Tensor, packed: Packed, pooling: str) -> Tensor:
    """[R, C, D] packed output -> [B, D]: each sequence's first token, or the mean over its tokens."""
    tokens = hidden.reshape(-1, hidden.shape[-1])[packed.index]  # [T, D], sequence by sequence
    if pooling == "cls":
        return tokens[packed.cu_seq_lens[:-1].long()]
    sums = tokens.new_zeros(packed.num_sequences, tokens.shape[-1]).index_add_(0, packed.sequence, tokens)
    lengths = packed.cu_seq_lens.diff().to(tokens.dtype)
    return sums / lengths[:, None]
