"""Parallel sentences (English <-> another language), one reader per format; each yields (line, record).

  jsonl  {en, text, lang}
  tsv    `en<TAB>xx` or `score<TAB>en<TAB>xx` (WikiMatrix); with a pair in the file name
         (`WikiMatrix.de-en.tsv.gz`) the two text columns follow the name's order; pairs scoring below
         data.parallel_min_score are dropped
  moses  two line-aligned files, `X.de-en.de` + `X.de-en.en` (OPUS); name either file or the prefix
         `X.de-en`; languages from the names, or data.parallel_lang for the non-English side
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from . import io
from .languages import ISO639_1, normal_lang
from .records import lang, parse_parallel, text

_PAIR = re.compile(r"\.([a-z]{2,3}(?:_[a-z0-9]+)?)-([a-z]{2,3}(?:_[a-z0-9]+)?)(?:\.|$)", re.IGNORECASE)


def name_codes(path: Path) -> tuple[str, str] | None:
    """The language pair a file name states, as spelled (`tatoeba.deu-eng.deu` -> ('deu', 'eng')), or None."""
    m = _PAIR.search(io.stem(path))
    return (m.group(1).lower(), m.group(2).lower()) if m else None


def name_pair(path: Path) -> tuple[str, str] | None:
    """The pair in its stored form, name order kept (`WikiMatrix.deu-eng.tsv` -> ('de', 'en')), or None."""
    codes = name_codes(path)
    return None if codes is None else (normal_lang(codes[0]), normal_lang(codes[1]))


def jsonl(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    return io.parsed(io.records(path), lambda t, n: parse_parallel(io.json_object(t, path, n), (path, n)), on_error)


def _other_lang(path: Path, opts, pair: tuple[str, str] | None) -> tuple[str, bool]:
    """(the non-English language, whether English is the first of the name's pair)."""
    if pair is not None and "en" in pair and pair != ("en", "en"):
        xx = pair[1] if pair[0] == "en" else pair[0]
        given = lang(opts.lang, (path, None), "data.parallel_lang") if opts.lang else xx
        if given != xx and given.split("-")[0] != xx:  # `pt-br` refines a name's `pt`; `fr` contradicts `de`
            raise DataError(path, None, "data.parallel_lang", f"the file name says {xx}, this says {given}; "
                            "expected the same language, or no data.parallel_lang")
        return given, pair[0] == "en"
    if pair is not None and set(pair) <= ISO639_1:  # two languages named, not English + another
        raise DataError(path, None, None, "expected English and another language in the name's pair "
                        f"(X.de-en.tsv), got {'-'.join(name_codes(path))}")
    if opts.lang:
        return lang(opts.lang, (path, None), "data.parallel_lang"), True
    raise DataError(path, None, None, "expected the language in the file name (X.de-en.tsv, X.de-en.de, "
                    "X.deu-eng.deu) or data.parallel_lang, with English on one side")


def tsv(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    xx, en_first = _other_lang(path, opts, name_pair(path))
    dropped = [0]

    def parse(line: str, line_no: int) -> dict | None:
        cols = io.tsv(line, path, line_no, (2, 3), "en, xx or score, en, xx")
        if line_no == 1 and io.is_header(cols):
            return None
        if len(cols) == 3:
            score = _score(cols[0], path, line_no)
            if opts.min_score is not None and score < opts.min_score:
                dropped[0] += 1
                return None
        first, second = cols[-2:]
        en, other = (first, second) if en_first else (second, first)
        where = (path, line_no)
        return {"en": text({"en": en}, "en", where), "text": text({"text": other}, "text", where), "lang": xx}

    yield from io.parsed(io.lines(path), parse, on_error)
    if dropped[0]:
        import logging

        logging.getLogger(__name__).info("%s: %d pairs below data.parallel_min_score=%s dropped", path,
                                         dropped[0], opts.min_score)


def _score(value: str, path, line_no: int) -> float:
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise DataError(path, line_no, "score", f"expected a number in the first of 3 columns, got {value!r}")
    return score


def moses_files(path: Path, opts) -> tuple[Path, Path, str]:
    """(English file, other file, its language) of a Moses pair named by either file or their prefix;
    the files' suffixes are the codes as the name spells them (`X.deu-eng.deu` + `X.deu-eng.eng`)."""
    codes, pair = name_codes(path), name_pair(path)
    if codes is None:
        raise DataError(path, None, None, "expected OPUS Moses file names such as X.de-en.de + X.de-en.en")
    xx, _ = _other_lang(path, opts, pair)
    if "en" not in pair:  # which file is the English one only the name can say
        raise DataError(path, None, None, "expected English (en or eng) as one language of the name's pair "
                        f"(X.de-en.de + X.de-en.en), got {'-'.join(codes)}")
    en_code, other_code = codes if pair[0] == "en" else codes[::-1]
    own = io.suffixes(path)[-1].lstrip(".") if io.suffixes(path) else ""
    if own in codes and path.is_file():
        name = path.name
        cut = name.lower().rfind("." + own)
        files = {code: path.with_name(name[:cut] + "." + code + name[cut + 1 + len(own):]) for code in codes}
    else:  # the prefix X.de-en
        files = {code: path.with_name(path.name + "." + code) for code in codes}
    for code in codes:  # the partner in any case (X.DEU-ENG.DEU + X.DEU-ENG.ENG), or compressed
        if not files[code].is_file():
            files[code] = io.find(path.parent, files[code].name) or files[code]
    for f in (files[en_code], files[other_code]):
        if not f.is_file():
            raise DataError(f, None, None, f"file not found: the Moses pair of {path.name} needs it")
    return files[en_code], files[other_code], xx


def moses(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    en_file, xx_file, xx = moses_files(path, opts)
    en_lines, xx_lines = io.lines(en_file, keep_blank=True), io.lines(xx_file, keep_blank=True)

    def rows():
        n = 0
        for n, (en, other) in enumerate(_zip_equal(en_lines, xx_lines, en_file, xx_file), start=1):
            yield n, (en[1], other[1])

    def parse(row, line_no: int) -> dict | None:
        en, other = row
        if not en.strip() and not other.strip():
            return None  # an empty pair keeps the files aligned; nothing to learn from
        return {"en": text({"en": en}, "en", (en_file, line_no)),
                "text": text({"text": other}, "text", (xx_file, line_no)), "lang": xx}

    return io.parsed(rows(), parse, on_error)


def _zip_equal(a, b, path_a: Path, path_b: Path):
    count_a = count_b = 0
    sentinel = object()
    while True:
        x, y = next(a, sentinel), next(b, sentinel)
        count_a += x is not sentinel
        count_b += y is not sentinel
        if x is sentinel or y is sentinel:
            if x is not y:
                # count the rest of the longer one so the message gives both lengths
                count_a += sum(1 for _ in a)
                count_b += sum(1 for _ in b)
                raise DataError(path_a, None, None, f"expected as many lines as {path_b} (a Moses pair is "
                                f"line-aligned), got {count_a} lines here and {count_b} there")
            return
        yield x, y
