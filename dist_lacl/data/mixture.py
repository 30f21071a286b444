"""Several IR datasets as one stream: the dataset of each global batch (or query), each dataset's own order.

data.train_ir may list several datasets. Each keeps its own BatchStream: its keyed permutation and its
position, counted in examples of all ranks together. With data.ir_batches=one, global batch s comes
from one dataset; with `mixed`, each of its queries from its own. The dataset is drawn with
p(d) ~ weight_d, or p(d) ~ n_d^data.ir_alpha without weights (the language sampler's rule,
`order.language_probabilities`), as a pure function of (seed, s) or (seed, s * B + row)
(`order.Categorical`). So every rank draws the same without communication, and a run resumed on
another world size continues every dataset's stream exactly.

In `one` mode a dataset's stream takes whole global batches, as a single dataset's always did (an
incomplete last batch of an epoch dropped); in `mixed` mode it takes as many examples as the step drew
from it, its epochs laid end to end. One dataset is exactly the single stream it always was: the same
batches, the same checkpoint state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..false_negatives import BatchKeys, group_keys
from .order import Categorical, language_probabilities
from .streams import BatchStream, StreamPosition

# Dataset i's order and hard negatives are keyed by train.seed + i * SOURCE_SEED_STRIDE (dataset 0: train.seed,
# as a single path); the dataset draws by train.seed + CHOICE_SEED_OFFSET (the parallel and monolingual
# streams have + 1 and + 2).
SOURCE_SEED_STRIDE = 7919
CHOICE_SEED_OFFSET = 3


@dataclass
class IRDraw:
    """This rank's queries of one step: per query, its dataset (an index into the mixture's), its example
    index in that dataset, and the epoch of that dataset's order it was drawn in."""

    sources: list[int]
    indices: list[int]
    epochs: list[int]


def dataset_probabilities(sources: Sequence, sizes: Sequence[int], alpha: float) -> list[float]:
    """p(d) ~ weight_d when every dataset has a weight (validated: all or none), else ~ n_d^alpha."""
    weighted = all(s.weight is not None for s in sources)
    basis = {s.name: s.weight if weighted else n for s, n in zip(sources, sizes)}
    probabilities = language_probabilities(basis, 1.0 if weighted else alpha)  # weights: the rule at alpha 1
    return [probabilities[s.name] for s in sources]


class IRMixture:
    """This rank's IR queries, step by step, from one or several datasets (config.IRSource entries), with
    a stream's interface (next_indices, state_dict, load_state_dict)."""

    ORDER = "ir-mixture-1"

    def __init__(self, sources: Sequence, datasets: Sequence, global_batch_size: int, seed: int, alpha: float,
                 mode: str, rank: int, world_size: int):
        self.names = [s.name for s in sources]
        self.datasets = list(datasets)
        self.seeds = [seed + i * SOURCE_SEED_STRIDE for i in range(len(sources))]
        self.streams = [BatchStream(len(data), global_batch_size, key, rank, world_size, f"data.train_ir ({s.path})",
                                    "train.ir_batch_size")
                        for s, data, key in zip(sources, self.datasets, self.seeds)]
        self.probabilities = dataset_probabilities(sources, [len(data) for data in self.datasets], alpha)
        self.choose = Categorical(self.probabilities, seed + CHOICE_SEED_OFFSET)
        self.mode = mode if len(sources) > 1 else "one"  # one dataset: its stream as it always was
        self.global_batch_size, self.rank, self.world_size = global_batch_size, rank, world_size
        self.step = 0

    @property
    def num_examples(self) -> int:
        """Queries in all the datasets together."""
        return sum(s.num_examples for s in self.streams)

    def next_indices(self) -> IRDraw:
        """This rank's queries of the next global batch."""
        step, self.step = self.step, self.step + 1
        if self.mode == "mixed":
            return self._mixed(step)
        source = int(self.choose(np.array([step]))[0])
        indices, epoch = self.streams[source].next_indices()
        return IRDraw([source] * len(indices), indices, [epoch] * len(indices))

    def _mixed(self, step: int) -> IRDraw:
        """Row j of global batch `step` is from dataset d_j, drawn at position step * B + j; it is the next
        unread example of d_j's order after the rows before it (of every rank) that drew d_j."""
        batch, streams = self.global_batch_size, self.streams
        rows = self.choose(np.arange(step * batch, (step + 1) * batch))
        sizes = np.array([s.num_examples for s in streams], dtype=np.int64)
        read = np.array([s.position.epoch * s.num_examples + s.position.offset for s in streams], dtype=np.int64)
        before = np.zeros(batch, dtype=np.int64)  # rows before row j that drew its dataset
        for d in range(len(streams)):
            before[rows == d] = np.arange(int((rows == d).sum()))
        flat = read[rows] + before  # the row's place in its dataset's epochs laid end to end
        per_rank = batch // self.world_size
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        sources, epochs, within = rows[mine], flat[mine] // sizes[rows[mine]], flat[mine] % sizes[rows[mine]]
        indices = np.zeros(per_rank, dtype=np.int64)
        for d, epoch in sorted(set(zip(sources.tolist(), epochs.tolist()))):
            these = (sources == d) & (epochs == epoch)
            indices[these] = streams[d].permutation(epoch)[within[these]]
        for stream, total in zip(streams, read + np.bincount(rows, minlength=len(streams))):
            stream.position = StreamPosition(*divmod(int(total), stream.num_examples))
        return IRDraw(sources.tolist(), indices.tolist(), epochs.tolist())

    def records(self, draw: IRDraw) -> list[dict]:
        """The draw's IR records in its order, read with one call per dataset."""
        out: list[dict] = [{}] * len(draw.indices)
        for d in sorted(set(draw.sources)):
            rows = [j for j, source in enumerate(draw.sources) if source == d]
            recs = self.datasets[d][[draw.indices[j] for j in rows]]
            for j, values in zip(rows, zip(*recs.values())):
                out[j] = dict(zip(recs, values))
        return out

    def keys(self, records: list[dict], groups: list[list[dict]], draw: IRDraw) -> BatchKeys:
        """The false-negative keys of the draw's queries: docids in their dataset's name where a batch mixes
        datasets (docids are unique within a dataset only), else in "" (a batch holds one dataset)."""
        if self.mode != "mixed":
            return group_keys(records, groups, "")
        return BatchKeys.concat([group_keys([r], [g], self.names[s]) for r, g, s in zip(records, groups, draw.sources)])

    def state_dict(self) -> dict:
        """One dataset: its stream's state, as a single path always saved; several: every stream's."""
        if len(self.streams) == 1:
            return self.streams[0].state_dict()
        return {"order": self.ORDER, "mode": self.mode, "step": self.step,
                "probabilities": dict(zip(self.names, self.probabilities)),
                "sources": {name: s.state_dict() for name, s in zip(self.names, self.streams)}}

    def load_state_dict(self, state: dict) -> None:
        saved = list(state["sources"]) if "sources" in state else None
        if len(self.streams) == 1 and saved is None:
            self.streams[0].load_state_dict(state)
            return
        if saved != self.names or state.get("mode") != self.mode:
            then = f"{len(saved)} datasets ({', '.join(saved)}), {state.get('mode')} per batch" if saved else "1 dataset"
            raise UserError(f"the checkpoint's IR data was {then}; this run has {len(self.names)} "
                            f"({', '.join(self.names)}), {self.mode} per batch: resume with the same data.train_ir "
                            "and data.ir_batches")
        for name, stream in zip(self.names, self.streams):
            stream.load_state_dict(state["sources"][name])
        self.step = state["step"]

    def examples_drawn(self, state: dict) -> dict[str, int]:
        """{name: queries drawn from each dataset by all ranks} at a state_dict(), so exact after a resume."""
        streams = state["sources"] if "sources" in state else {self.names[0]: state}
        return {name: _drawn(s, self.mode) for name, s in streams.items()}


def _drawn(stream: dict, mode: str) -> int:
    """Examples a stream's state has read: `one` mode reads whole global batches of each epoch."""
    n, batch = stream["num_examples"], stream["global_batch_size"]
    return stream["epoch"] * (n if mode == "mixed" else n // batch * batch) + stream["offset"]
