"""Helpers shared by the data builders: jsonl output, seeded capping, language codes, count tables."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from ..atomic import write_text


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is), atomically; returns the count."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(lines))
    return len(lines)


def seeded_sample(items: Iterable, cap: int | None, seed: int, key: str) -> list:
    """Order `items` by a hash of (seed, key, item) and keep the first `cap` (all if cap is None).
    The result does not depend on the order the items came in, nor on PYTHONHASHSEED; and adding or
    removing one item (a package update) changes at most one item of the sample."""
    def rank(item) -> str:
        return hashlib.sha1(f"{seed}:{key}:{json.dumps(item, ensure_ascii=False)}".encode()).hexdigest()

    ranked = sorted(set(items), key=lambda item: (rank(item), item))
    return ranked if cap is None else ranked[:cap]


def lang_code(locale_name: str) -> str | None:
    """Directory names such as `de`, `pt_BR`, `zh_CN` -> `de`, `pt-br`, `zh-cn`. Names with an
    `@variant` (sr@latin, ca@valencia, en@quot) or an encoding suffix return None: they are skipped."""
    if not re.fullmatch(r"[A-Za-z]{2,3}(_[A-Za-z0-9]{2,8})?", locale_name):
        return None
    return locale_name.lower().replace("_", "-")


def print_table(title: str, rows: dict[str, dict[str, int]]) -> None:
    """A small table: one row per language (columns are the keys of its dict), then the totals."""
    columns = list(next(iter(rows.values()), {}))
    width = max([len("total"), *map(len, rows)])
    print(title)
    print(f"  {'lang':<{width}}" + "".join(f"  {c:>10}" for c in columns))
    for lang, row in rows.items():
        print(f"  {lang:<{width}}" + "".join(f"  {row[c]:>10,}" for c in columns))
    totals = {c: sum(row[c] for row in rows.values()) for c in columns}
    print(f"  {'total':<{width}}" + "".join(f"  {totals[c]:>10,}" for c in columns))


def parse_langs(value: str | Iterable[str] | None) -> list[str] | None:
    """'de,fr, pt_BR' -> ['de', 'fr', 'pt-br']; None or '' means every language found."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    langs = [p.strip().lower().replace("_", "-") for p in parts if p.strip()]
    return langs or None
