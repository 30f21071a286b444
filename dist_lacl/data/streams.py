"""The resumable streams of example indices: epochs of a keyed permutation (BatchStream) or draws by
language (LanguageStream), each yielding this rank's slice of consecutive global batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets

from ..errors import UserError
from .order import KeyedPermutation, LanguageSampler

log = logging.getLogger(__name__)


@dataclass
class StreamPosition:
    """Where a stream is: the epoch (which permutation) and how many examples of it were consumed."""

    epoch: int = 0
    offset: int = 0


class BatchStream:
    """Yields this rank's slice of consecutive global batches from a (seed, epoch) permutation.

    The position counts *examples* of the epoch's permutation consumed by all ranks together, so a run
    resumed on another world size (with the same global batch size) continues at the same example:
    none is repeated or skipped within the epoch. An incomplete last global batch is dropped; the
    stream then moves to the next epoch's permutation. The permutation is computed per index
    (order.KeyedPermutation), so its memory does not grow with the number of examples.
    """

    ORDER = "keyed-feistel-1"  # the permutation's name, kept in checkpoints

    def __init__(self, num_examples: int, global_batch_size: int, seed: int, rank: int, world_size: int,
                 source: str = "the data", batch_key: str = "the global batch size"):
        if num_examples < global_batch_size:
            raise UserError(f"{source}: only {num_examples} examples for {batch_key}={global_batch_size}; "
                            f"lower {batch_key} or add data")
        self.num_examples, self.global_batch_size = num_examples, global_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = StreamPosition()
        self._perm = None

    def permutation(self, epoch: int) -> KeyedPermutation:
        if self._perm is None or self._perm.epoch != epoch:
            self._perm = KeyedPermutation(self.num_examples, self.seed * 100_003, epoch)
        return self._perm

    def next_indices(self) -> tuple[list[int], int]:
        """This rank's example indices for the next global batch, and the epoch they belong to."""
        pos = self.position
        if pos.offset + self.global_batch_size > self.num_examples:
            pos.epoch, pos.offset = pos.epoch + 1, 0
        per_rank = self.global_batch_size // self.world_size
        start = pos.offset + self.rank * per_rank
        indices = self.permutation(pos.epoch).slice(start, start + per_rank)
        epoch = pos.epoch
        pos.offset += self.global_batch_size
        return indices, epoch

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "offset": self.position.offset, "order": self.ORDER,
                "num_examples": self.num_examples, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" not in state:
            raise UserError(f"the checkpoint's data stream was drawn by language ({state.get('order')}), this one "
                            "is in epochs: resume with the same data.language_alpha")
        if state["num_examples"] != self.num_examples:
            raise UserError(f"the checkpoint's data stream had {state['num_examples']} examples, "
                            f"the data now has {self.num_examples}: resume with the same training files")
        if state.get("order") != self.ORDER:
            log.warning("the checkpoint's data order predates %s: the rest of epoch %d follows the new order, "
                        "so some examples of it may repeat or be skipped", self.ORDER, state["epoch"])
        self.position = StreamPosition(state["epoch"], state["offset"])


class LanguageStream:
    """Yields this rank's slice of global batches drawn by language (order.LanguageSampler), with the
    same interface as BatchStream.

    Step s draws the global positions s * B .. s * B + B - 1; rank r takes its rows rank by rank, as
    the gather concatenates them. A draw is a pure function of (seed, position), so the step counter is
    the whole resumable state, and a run resumed on another world size draws the same global batches.
    """

    ORDER = "language-sampler-1"

    def __init__(self, sampler: LanguageSampler, num_examples: int, global_batch_size: int, rank: int,
                 world_size: int):
        self.sampler, self.num_examples, self.global_batch_size = sampler, num_examples, global_batch_size
        self.rank, self.world_size = rank, world_size
        self.step = 0

    def global_draws(self, step: int) -> list[int]:
        """Every rank's example indices at `step`, rank-major."""
        return self.sampler.indices(step * self.global_batch_size, self.global_batch_size)

    def next_indices(self) -> tuple[list[int], int]:
        """This rank's example indices for the next global batch, and the nominal epoch (examples
        drawn / examples; draws are with replacement, so it only says how far the stream has come)."""
        per_rank = self.global_batch_size // self.world_size
        draws = self.global_draws(self.step)[self.rank * per_rank:(self.rank + 1) * per_rank]
        epoch = self.step * self.global_batch_size // self.num_examples
        self.step += 1
        return draws, epoch

    def state_dict(self) -> dict:
        return {"step": self.step, "order": self.ORDER, "alpha": self.sampler.alpha, "seed": self.sampler.seed,
                "num_examples": self.num_examples, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("order") != self.ORDER or state["num_examples"] != self.num_examples:
            raise UserError(f"the checkpoint's data stream ({state.get('order')}, {state['num_examples']} "
                            f"examples) is not this one ({self.ORDER}, {self.num_examples} examples): resume "
                            "with the same training files and data.language_alpha")
        self.step = state["step"]


def language_sampler(dataset: datasets.Dataset, seed: int, alpha: float) -> LanguageSampler:
    """The sampler over `dataset`'s "lang" column: from its languages' index ranges when each language's
    examples are contiguous (as `dist-lacl data` writes them: O(#languages) memory), else per example."""
    import numpy as np

    column = dataset.data.column("lang").combine_chunks().dictionary_encode()
    codes = column.indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    names = column.dictionary.to_pylist()
    if len(starts) == len(names):  # one run per language
        stops = np.append(starts[1:], len(codes))
        return LanguageSampler.from_ranges({names[codes[a]]: (int(a), int(b)) for a, b in zip(starts, stops)},
                                           seed, alpha)
    return LanguageSampler(np.asarray(names, dtype=object)[codes].astype(str), seed, alpha)
