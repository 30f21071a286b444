"""Monolingual text, one reader per format; each yields (line, internal record {text, lang}).

  jsonl  {text, lang}
  text   one sentence or paragraph per line, blank lines between documents (CC-100: `de.txt.xz`);
         the language from data.monolingual_lang, else the file name (`de.txt.xz`, `cc100.de.txt`)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from . import io
from .languages import is_language_code, normal_lang
from .records import lang, parse_monolingual


def jsonl(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    return io.parsed(io.records(path), lambda t, n: parse_monolingual(io.json_object(t, path, n), (path, n)),
                     on_error)


def file_lang(path: Path) -> str | None:
    """`de.txt.xz` -> 'de'; `cc100.pt_br.txt` -> 'pt-br'; None when the name holds no language code."""
    parts = io.stem(path).removesuffix(".txt").replace("_", "-").split(".")
    return normal_lang(parts[-1]) if is_language_code(parts[-1]) else None


def text(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    code = lang(opts.lang, (path, None), "data.monolingual_lang") if opts.lang else file_lang(path)
    if code is None:
        raise DataError(path, None, None, "expected the language in the file name (de.txt.xz) or "
                        "data.monolingual_lang")
    return io.parsed(io.lines(path), lambda t, n: {"text": t.strip(), "lang": code}, on_error)
