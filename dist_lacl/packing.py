"""Padding-free batches: a chunk's sequences packed into one row, attention kept within each sequence.

`pack` turns a right-padded [B, L] batch into one row of its T real tokens, with position ids that
restart at every sequence (at the model's first position: 0 for BERT, padding_idx + 1 for RoBERTa and
XLM-R) and the cumulative lengths flash-attention's varlen kernel takes. `attention_kwargs` is what the
encoder's attention needs to keep each sequence to itself: cu_seq_lens / max_length for transformers'
flash-attention path, or, for SDPA and eager attention (the CPU reference of the same layout: it
computes all T x T scores, so it is for tests, not for speed), a block-diagonal [1, 1, T, T] mask, which
transformers hands to the attention as it is. `pool_packed` pools the packed [1, T, D] output per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


@dataclass
class Packed:
    """One chunk packed: T real tokens of B sequences, in the chunk's row order."""

    input_ids: Tensor  # [1, T]
    position_ids: Tensor  # [1, T]: 0.. (or first_position..) within each sequence
    sequence: Tensor  # [T]: the row each token comes from
    cu_seq_lens: Tensor  # [B + 1] int32: sequence b is tokens cu_seq_lens[b]:cu_seq_lens[b + 1]
    max_length: int  # the longest sequence

    @property
    def num_sequences(self) -> int:
        return len(self.cu_seq_lens) - 1


def pack(input_ids: Tensor, attention_mask: Tensor, first_position: int = 0) -> Packed:
    """[B, L] ids and right-padding mask -> one row of the real tokens; position ids restart per row."""
    lengths = attention_mask.sum(1)
    sequence = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    starts = lengths.cumsum(0) - lengths
    positions = torch.arange(len(sequence), device=lengths.device) - starts[sequence] + first_position
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return Packed(input_ids[attention_mask.bool()][None], positions[None], sequence, cu_seq_lens,
                  int(lengths.max()))


def attention_kwargs(packed: Packed, attn_implementation: str, dtype: torch.dtype) -> dict:
    """The encoder keyword arguments that restrict attention to each packed sequence."""
    if attn_implementation in FLASH_IMPLEMENTATIONS:
        return {"cu_seq_lens_q": packed.cu_seq_lens, "cu_seq_lens_k": packed.cu_seq_lens,
                "max_length_q": packed.max_length, "max_length_k": packed.max_length}
    same = packed.sequence[:, None] == packed.sequence[None, :]  # [T, T]: attend within the sequence
    if attn_implementation != "eager":
        return {"attention_mask": same[None, None]}  # SDPA takes a boolean mask (True: attend)
    additive = torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill_(~same, torch.finfo(dtype).min)
    return {"attention_mask": additive[None, None]}  # eager attention adds its mask to the scores


def pool_packed(hidden: Tensor, packed: Packed, pooling: str) -> Tensor:
    """[1, T, D] packed output -> [B, D]: each sequence's first token, or the mean over its tokens."""
    hidden = hidden[0]
    if pooling == "cls":
        return hidden[packed.cu_seq_lens[:-1].long()]
    sums = hidden.new_zeros(packed.num_sequences, hidden.shape[-1]).index_add_(0, packed.sequence, hidden)
    lengths = packed.cu_seq_lens.diff().to(hidden.dtype)
    return sums / lengths[:, None]
