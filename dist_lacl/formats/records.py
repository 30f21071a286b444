"""The internal training records and their validation, shared by every reader of every format.

  ir:          {"query_id": str, "query": str, "positives": [{"docid", "title", "text"}], "negatives": [...]}
               a passage may also carry "score": float, a teacher's score of it for its query (absent: none)
  parallel:    {"en": str, "text": str, "lang": str}   (text = the translation of en into lang)
  monolingual: {"text": str, "lang": str}
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter

from ..errors import DataError
from .languages import is_language_code, normal_lang

log = logging.getLogger(__name__)


def passage_text(title: str, text: str) -> str:
    """The one string a passage is encoded as, in training, evaluation, mining and the builders: title
    and text, each stripped, joined by one space as Tevatron and DPR do; an empty title adds nothing."""
    return " ".join(part for part in (title.strip(), text.strip()) if part)


def text_id(text: str) -> str:
    """A deterministic id for a text that has none (FlagEmbedding, DPR without passage_id): 't' + 16 hex."""
    return "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- fields

def text(rec: dict, key: str, where) -> str:
    value = rec.get(key)
    if key not in rec:
        raise DataError(*where, key, "missing; expected a non-empty string")
    if not isinstance(value, str):
        raise DataError(*where, key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(*where, key, "expected a non-empty string, got an empty one")
    return unicode(value, where, key)


def unicode(value: str, where, key: str) -> str:
    """`value`, if UTF-8 can hold it: JSON's \\ud800-\\udfff escapes, alone, give strings it cannot."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(*where, key, f"expected Unicode text, got a lone surrogate {value[e.start]!r} "
                            "(a \\ud800-\\udfff escape without its pair)") from None
    return value


def ident(rec: dict, key: str, where) -> str:
    value = rec.get(key)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(*where, key, "expected a string" + (" (missing)" if key not in rec else ""))
    return unicode(str(value), where, key)


def lang(value, where, key: str = "lang") -> str:
    if not isinstance(value, str) or not is_language_code(value):
        raise DataError(*where, key, f"expected a language code such as 'de' or 'pt-br', got {value!r}")
    return normal_lang(value)


def str_list(rec: dict, key: str, where, required: bool) -> list:
    value = rec.get(key, None if required else [])
    if not isinstance(value, list) or (required and not value):
        raise DataError(*where, key, "expected a non-empty list" if required else "expected a list")
    return value


def passages(rec: dict, key: str, where, required: bool) -> list[dict]:
    """A list of {docid, title, text} objects (Tevatron legacy); title optional."""
    value = rec.get(key, [] if not required else None)
    if not isinstance(value, list):
        raise DataError(*where, key, "expected a list of {docid, title, text} objects")
    if required and not value:
        raise DataError(*where, key, "expected at least one positive passage")
    return [scored(passage(p, f"{key}[{i}]", where, "docid"), p, f"{key}[{i}]", where) for i, p in enumerate(value)]


def scored(out: dict, p, name: str, where) -> dict:
    """`out` with the teacher's `score` of source passage `p`, when it has one."""
    if isinstance(p, dict) and "score" in p:
        out["score"] = score(p["score"], where, f"{name}.score")
    return out


def score(value, where, key: str) -> float:
    """A teacher's score of a passage: a finite number (a bool, a string, NaN or an infinity is refused)."""
    try:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        ok = False
    if not ok:
        raise DataError(*where, key, f"expected a finite number (a teacher's score), got {value!r}")
    return float(value)


def passage(p, name: str, where, id_key: str | None) -> dict:
    """{docid, title, text} from an object whose id is `id_key`; with id_key None, or an optional id
    absent, the id is made from the text (`text_id`). Only `docid` (Tevatron) is required."""
    if not isinstance(p, dict):
        raise DataError(*where, name, "expected an object {docid, title, text}")
    title = p.get("title") or ""
    if not isinstance(title, str):
        raise DataError(*where, f"{name}.title", "expected a string")
    unicode(title, where, f"{name}.title")
    body = text(p, "text", where)
    if id_key is not None and (id_key in p or id_key == "docid"):
        value = p.get(id_key)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise DataError(*where, f"{name}.{id_key}", "expected a string")
        return {"docid": unicode(str(value), where, f"{name}.{id_key}"), "title": title, "text": body}
    return {"docid": text_id(f"{title} {body}" if title else body), "title": title, "text": body}


def parse_ir(rec: dict, where) -> dict:
    """A Tevatron legacy record -> the internal IR record."""
    return {"query_id": ident(rec, "query_id", where), "query": text(rec, "query", where),
            "positives": passages(rec, "positive_passages", where, required=True),
            "negatives": passages(rec, "negative_passages", where, required=False)}


def parse_parallel(rec: dict, where) -> dict:
    return {"en": text(rec, "en", where), "text": text(rec, "text", where),
            "lang": lang(text(rec, "lang", where), where)}


def parse_monolingual(rec: dict, where) -> dict:
    return {"text": text(rec, "text", where), "lang": lang(text(rec, "lang", where), where)}


# ---------------------------------------------------------------- suspicious, not wrong: counted, warned once

class Suspicious:
    """Counts records that are valid but probably not what the user meant; `report` warns once per file."""

    def __init__(self, path):
        self.path, self.counts, self.first = path, Counter(), {}

    def note(self, what: str, line: int) -> None:
        self.note_many(what, 1, line)

    def note_many(self, what: str, count: int, first_line: int) -> None:
        self.counts[what] += count
        self.first.setdefault(what, first_line)

    def check(self, kind: str, rec: dict, line: int) -> dict:
        """The record, with hard negatives that share a positive's docid dropped (and counted)."""
        if kind == "ir":
            positive_ids = {p["docid"] for p in rec["positives"]}
            kept = [p for p in rec["negatives"] if p["docid"] not in positive_ids]
            if len(kept) != len(rec["negatives"]):
                self.note("hard negatives with the docid of their query's positive (dropped)", line)
                rec["negatives"] = kept
        elif kind == "parallel":
            if rec["lang"] == "en" or rec["lang"].startswith("en-"):
                self.note("parallel pairs whose lang is English", line)
            if rec["text"].strip() == rec["en"].strip():
                self.note("parallel pairs whose text equals the English", line)
        return rec

    def report(self) -> None:
        for what, n in self.counts.items():
            log.warning("%s: %d %s (first on line %s)", self.path, n, what, self.first[what])
