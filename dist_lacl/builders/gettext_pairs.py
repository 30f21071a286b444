"""Parallel pairs {"en", "text", "lang"} from gettext `.mo` catalogs (`<root>/<locale>/LC_MESSAGES/*.mo`).

Each catalog maps an English UI or error string (msgid) to its translation (msgstr). The strings are
short (median about 6 words) but real, and a base Debian system carries them for about 200 languages.
Kept: singular entries without a context, translated (text != en), with English between `min_words`
and `max_words` words once placeholders are removed, and with the same placeholders on both sides.
Locale directories map to codes as `pt_BR` -> `pt-br`; those with an `@variant` are skipped.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from collections import Counter
from pathlib import Path

from ..errors import UserError
from .common import lang_code, parse_langs, print_table, seeded_sample, write_jsonl

DEFAULT_ROOTS = ("/usr/share/locale",)


def django_roots() -> list[str]:
    """The locale folders of the installed Django wheel (conf/locale and contrib/*/locale, holding
    <locale>/LC_MESSAGES/django.mo and djangojs.mo); empty when Django is not installed. Found without
    importing Django."""
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        return []
    base = Path(next(iter(spec.submodule_search_locations)))
    return [str(p) for p in [base / "conf" / "locale", *sorted(base.glob("contrib/*/locale"))] if p.is_dir()]

# printf conversions (%s, %d, %1$s, %-10.3f, %lu, %%), Python's %(name)s, and brace fields ({0}, {name}, {}).
_PRINTF = re.compile(r"%(?:\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspm%]")
_PY_NAMED = re.compile(r"%\([^)]*\)[-+#0]*\d*(?:\.\d+)?[a-zA-Z]")
_BRACES = re.compile(r"\{[^{}\s]*\}")
# Keyboard mnemonics: "_Open", "&Save", "ファイル(_F)".
_MNEMONIC_SUFFIX = re.compile(r"\s*\(\s*[_&][^\W_]\)")
_MNEMONIC = re.compile(r"(?<!\w)[_&](?=[^\W_])(?!\w+;)")  # not an HTML entity such as &amp;
_WORD = re.compile(r"[^\W\d_]{2,}")


def read_mo(path: str | Path) -> list[tuple[str, str]]:
    """All (msgid, msgstr) entries of a compiled catalog, decoded with the catalog's charset.
    A plural entry's msgid holds "singular\\0plural"; a context entry's holds "context\\x04msgid"."""
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise ValueError("too short for a .mo file")
    magic = struct.unpack("<I", data[:4])[0]
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(magic)
    if order is None:
        raise ValueError("not a .mo file (bad magic number)")
    num_strings, orig_table, trans_table = struct.unpack(order + "III", data[8:20])

    def string(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "II", data[table + 8 * i: table + 8 * i + 8])
        return data[offset: offset + length]

    raw = [(string(orig_table, i), string(trans_table, i)) for i in range(num_strings)]
    header = dict(raw).get(b"", b"").decode("ascii", "replace")
    charset = re.search(r"charset=([-\w]+)", header)
    encoding = charset.group(1) if charset and charset.group(1).upper() != "CHARSET" else "utf-8"
    entries = []
    for msgid, msgstr in raw:
        try:
            entries.append((msgid.decode(encoding), msgstr.decode(encoding)))
        except (UnicodeDecodeError, LookupError):
            continue
    return entries


def clean(s: str) -> str:
    """Drop keyboard mnemonics and collapse whitespace (multi-line help texts become one line)."""
    s = _MNEMONIC.sub("", _MNEMONIC_SUFFIX.sub("", s))
    return " ".join(s.split())


def placeholders(s: str) -> list[str]:
    """Placeholders as a sorted list; positions are dropped (%1$s == %s) since translations reorder."""
    printf = [re.sub(r"\d+\$", "", m) for m in _PRINTF.findall(_PY_NAMED.sub("", s)) if m != "%%"]
    return sorted(printf + _PY_NAMED.findall(s) + _BRACES.findall(s))


def strip_placeholders(s: str) -> str:
    return _BRACES.sub(" ", _PRINTF.sub(" ", _PY_NAMED.sub(" ", s)))


def keep_pair(en: str, text: str, min_words: int, max_words: int) -> bool:
    """The filters, in order: translated and not an option's help line, long enough in real words (a string dominated by
    placeholders fails here), not too long, the same placeholders on both sides, letters in the
    translation."""
    if not text or text == en or en.startswith("-"):  # "-" starts a command-line option's help line
        return False
    num_words = len(_WORD.findall(strip_placeholders(en)))
    if num_words < min_words or len(en.split()) > max_words:
        return False
    if placeholders(en) != placeholders(text):
        return False
    return re.search(r"[^\W\d_]", strip_placeholders(text)) is not None


def find_catalogs(roots, langs: list[str] | None) -> dict[str, list[Path]]:
    """lang code -> .mo files (sorted) under every root that exists; English locales are skipped."""
    catalogs: dict[str, list[Path]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            print(f"gettext: {root} not found, skipped")
            continue
        for locale_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            lang = lang_code(locale_dir.name)
            if lang is None or lang == "en" or lang.startswith("en-") or (langs and lang not in langs):
                continue
            catalogs.setdefault(lang, []).extend(sorted((locale_dir / "LC_MESSAGES").glob("*.mo")))
    return {lang: files for lang, files in sorted(catalogs.items()) if files}


def build_gettext_pairs(output: str | Path, roots=DEFAULT_ROOTS, langs=None, min_words: int = 3,
                        max_words: int = 40, cap_per_lang: int | None = None, seed: int = 0,
                        min_unique: int = 0, details: dict | None = None) -> dict[str, int]:
    """Write parallel pairs to `output` (jsonl); returns {lang: pairs written}. Languages with fewer
    than `min_unique` unique pairs are left out (written 0, not in the result); `details`, if given,
    receives every language's row of the printed table (catalogs, entries, unique, written)."""
    langs = parse_langs(langs)
    catalogs = find_catalogs(roots, langs)
    if not catalogs:
        wanted = ", ".join(langs) if langs else "any language"
        raise UserError(f"no gettext catalogs (*/LC_MESSAGES/*.mo) for {wanted} under {', '.join(map(str, roots))}")
    missing = sorted(set(langs or ()) - set(catalogs))
    if missing:
        print(f"gettext: no catalogs for {', '.join(missing)}")
    records, rows = [], {}
    for lang, files in catalogs.items():
        stats, pairs = Counter(), set()
        for path in files:
            try:
                entries = read_mo(path)
            except (OSError, ValueError) as e:
                print(f"gettext: {path}: {e}, skipped")
                continue
            stats["catalogs"] += 1
            for msgid, msgstr in entries:
                # "\0" marks a plural entry and "\x04" a context entry; the empty msgid is the header.
                if not msgid or "\0" in msgid or "\x04" in msgid:
                    continue
                stats["entries"] += 1
                en, text = clean(msgid), clean(msgstr)
                if keep_pair(en, text, min_words, max_words):
                    pairs.add((en, text))
        kept = seeded_sample(pairs, cap_per_lang, seed, lang) if len(pairs) >= min_unique else []
        records += [{"en": en, "text": text, "lang": lang} for en, text in kept]
        rows[lang] = {"catalogs": stats["catalogs"], "entries": stats["entries"], "unique": len(pairs),
                      "written": len(kept)}
    if min_unique and not records:
        raise UserError(f"no language has at least {min_unique} unique gettext pairs under {', '.join(map(str, roots))}")
    write_jsonl(output, records)
    print_table(f"gettext parallel pairs -> {output}", rows)
    if min_unique:
        dropped = sorted(lang for lang, row in rows.items() if row["unique"] < min_unique)
        print(f"gettext: {len(dropped)} languages under {min_unique} unique pairs left out: {', '.join(dropped)}")
    if details is not None:
        details.update(rows)
    return {lang: row["written"] for lang, row in rows.items() if row["unique"] >= min_unique}
