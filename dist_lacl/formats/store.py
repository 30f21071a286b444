"""A compact id -> (title, text) table for formats that give passages by id (MS MARCO, Tevatron v2)."""

from __future__ import annotations

from array import array


class TextStore:
    """Passages held as one UTF-8 buffer and an array of end offsets: about 60 bytes per passage beyond
    its text (a dict of Python strings costs several times the text), so only the passages that the
    queries name are kept."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.blob, self.ends = bytearray(), array("q")

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def add(self, key: str, title: str, text: str) -> None:
        self.index[key] = len(self.ends)
        self.blob += f"{title}\x00{text}".encode()
        self.ends.append(len(self.blob))

    def get(self, key: str) -> tuple[str, str] | None:
        i = self.index.get(key)
        if i is None:
            return None
        start = self.ends[i - 1] if i else 0
        title, _, text = self.blob[start:self.ends[i]].decode("utf-8").partition("\x00")
        return title, text
