"""The IR training datasets of a run config: data.train_ir as a list of typed entries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class IRSource:
    """One IR training dataset of a data.train_ir list (docs/formats.md, several IR datasets)."""

    path: str = ""
    """The data: a file, or MS MARCO's directory."""
    format: str = "auto"
    """Its format, as data.train_ir_format."""
    name: str = ""
    """Its name in checkpoints and logs (data/ir/<name>); default the file name up to its first dot. Unique."""
    weight: float | None = None
    """Its share of the global batches; without a weight on every entry, p ~ size^data.ir_alpha."""
    corpus: str | None = None
    """The corpus it names passages from, as data.train_corpus."""

    def __post_init__(self):
        if not self.name and self.path:
            self.name = Path(self.path).name.split(".")[0] or Path(self.path).name

    @classmethod
    def listed(cls, train_ir: str | list[IRSource], fmt: str, corpus: str | None) -> list[IRSource]:
        """data.train_ir as a list, so that one path and several datasets take one way through training:
        a path is one dataset, read with data.train_ir_format and data.train_corpus."""
        return [cls(train_ir, fmt, corpus=corpus)] if isinstance(train_ir, str) else list(train_ir)
