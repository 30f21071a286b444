"""Monolingual sentences {"text", "lang"} from translated manual pages (`<root>/<locale>/man*/*.gz`,
installed by Debian's `manpages-<lang>` packages and by other packages' translations).

The roff source is reduced to running text with a deliberately small model of roff: request lines
(`.XX`) are dropped except the font macros that carry text (`.B`, `.I`, `.BR`, ...); the tag line
after `.TP` (usually an option name) and no-fill blocks (`.nf`/`.fi`, `.EX`/`.EE`, tables) are
dropped; escapes are decoded or removed. Paragraphs are split into sentences; a sentence is kept if
it is between `min_chars` and `max_chars` long, ends like a sentence, is mostly letters, and does
not look English (translated pages keep some untranslated paragraphs): in a language not written in
the Latin alphabet, most letters must be non-ASCII; in the others, under a fifth of the words may be
common English words.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections import Counter
from pathlib import Path

from ..errors import UserError
from .common import lang_code, parse_langs, print_table, seeded_sample, write_jsonl

DEFAULT_ROOTS = ("/usr/share/man",)

UNKNOWN = "\ufffd"  # marks an escape we cannot decode; sentences containing it are dropped

_FONT_MACROS = {"B", "I", "SM", "SB"}  # arguments joined with spaces
_ALTERNATING_MACROS = {"BR", "RB", "BI", "IB", "IR", "RI"}  # arguments joined without spaces
# Requests that start a block we drop (examples, tables, equations, macro definitions) -> its end.
_NO_FILL = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "PS": "PE", "de": ".", "ig": "."}
_NO_BREAK = {"\\\"", "ft", "ps", "ne", "nh", "hy", "ad", "na", "UR", "UE", "MT", "ME", "ds", "nr", "so"}

_SPECIAL = {
    "em": "—", "en": "–", "hy": "-", "mi": "−", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘",
    "cq": "’", "Bq": "„", "bq": "‚", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "bu": "•", "co": "©",
    "rg": "®", "tm": "™", "ul": "_", "rs": "\\", "at": "@", "ha": "^", "ti": "~", "bv": "|", "br": "|",
    "ss": "ß", "de": "°", "mu": "×", "di": "÷", "pl": "+", "eq": "=", ">=": "≥", "<=": "≤", "!=": "≠",
    "->": "→", "<-": "←", "dg": "†", "sc": "§", "ps": "¶", "Eu": "€", "eu": "€", "if": "∞", "sl": "/",
}
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303", ",": "\u0327"}
# Strings defined by pod2man and man-pages' preambles.
_STRINGS = {"Aq": "'", "lq": "“", "rq": "”", 'L"': '"', 'R"': '"', "C'": '"', "C`": '"', "--": "—",
            "Q": '"', "U": '"', "R": "®", "Tm": "™"}
_SINGLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`", ".": ".",
           "t": " "}

_ESCAPE = re.compile(
    r"\\(?:"
    r"(?P<font>f(?:\[[^\]]*\]|\(..|.))"
    r"|(?P<size>s[-+]?(?:\(\d\d|\[\d+\]|\d))"
    r"|\*(?P<string>\[[^\]]*\]|\(..|.)"
    r"|\((?P<special2>..)"
    r"|\[(?P<special>[^\]]*)\]"
    r"|(?P<register>[nkgYVm$](?:\[[^\]]*\]|\(..|.))"
    r"|(?P<motion>[hvwlLoxbDXRZNCS]'[^']*')"
    r"|(?P<single>.)"
    r")"
)


def _bracketed(name: str) -> str:
    return name[1:-1] if name.startswith("[") else name[1:] if name.startswith("(") else name


def special_char(name: str) -> str:
    """A named glyph: `em`, `'e` (composite), `u00E4` (Unicode); UNKNOWN if we do not know it."""
    if name in _SPECIAL:
        return _SPECIAL[name]
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    if re.fullmatch(r"u[0-9A-F]{4,6}(_[0-9A-F]{4,6})*", name):
        return unicodedata.normalize("NFC", "".join(chr(int(h, 16)) for h in name[1:].split("_")))
    return UNKNOWN


def _decode_escape(m: re.Match) -> str:
    if m.group("string"):
        return _STRINGS.get(_bracketed(m.group("string")), "")
    if m.group("special2"):
        return special_char(m.group("special2"))
    if m.group("special") is not None:
        return special_char(m.group("special"))
    if m.group("single") is not None:
        return _SINGLE.get(m.group("single"), "")  # \& \| \^ \% \c \/ \, \{ \} ... print nothing
    return ""  # font, size, register and motion escapes print nothing we want


def unescape(line: str) -> str:
    """Decode roff escapes in one line of text (fonts, glyphs, strings); drop a trailing comment."""
    line = re.sub(r'\\".*', "", line)
    return _ESCAPE.sub(_decode_escape, line)


def _macro_args(rest: str) -> list[str]:
    return [q if q else w for q, w in re.findall(r'"((?:[^"]|"")*)"|(\S+)', rest)]


# Chinese and Japanese do not separate words with spaces (Korean does).
_CJK_CHAR = re.compile("[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


def _join_lines(lines: list[str]) -> str:
    """Join text lines with a space, except between two Chinese or Japanese characters, where a line
    break in the source is not a word break."""
    text = lines[0].strip()
    for line in lines[1:]:
        line = line.strip()
        cjk_join = _CJK_CHAR.match(text[-1:]) and _CJK_CHAR.match(line[:1])
        text += line if cjk_join else " " + line
    return text


def roff_paragraphs(source: str) -> list[str]:
    """Running text of a roff page, one string per paragraph."""
    paragraphs, current = [], []
    end_of_skip, drop_tag = None, False

    def flush():
        if current:
            paragraphs.append(" ".join(_join_lines(current).split()))
            current.clear()

    for line in source.splitlines():
        if end_of_skip is not None:
            if line.startswith(".") and line[1:].split()[:1] == [end_of_skip]:
                end_of_skip = None
            continue
        if line.startswith((".", "'")):
            name, _, rest = line[1:].strip().partition(" ")
            name = name[:2] if name.startswith('\\"') else name
            if name in _NO_FILL:
                flush()
                end_of_skip = _NO_FILL[name]
            elif name in _FONT_MACROS or name in _ALTERNATING_MACROS:
                joiner = " " if name in _FONT_MACROS else ""
                text = unescape(joiner.join(_macro_args(rest)))
                if drop_tag:
                    drop_tag = False
                elif text.strip():
                    current.append(text)
            elif name not in _NO_BREAK:
                flush()
                drop_tag = name == "TP"
            continue
        if not line.strip():
            flush()
        elif drop_tag:
            drop_tag = False
        else:
            current.append(unescape(line))
    flush()
    return paragraphs


# Words that end in "." without ending a sentence ("z. B.", "d. h.", "e.g.", "p. ex.", "cf.").
_ABBREVIATIONS = {"bzw", "usw", "ggf", "vgl", "etc", "ca", "nr", "dr", "bspw", "evtl", "inkl", "sog", "resp",
                  "ex", "cf", "vs", "ecc", "pag", "p.ex", "z.b", "d.h", "u.a", "e.g", "i.e", "ibid", "cap",
                  "op", "n", "no", "art", "ver", "núm", "т.е", "т.д", "т.п", "см", "др"}
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'“«„(\[¿¡]?[^\W\d_])|(?<=[。！？])\s*")
_SENTENCE_END = re.compile(r"[.!?。！？][\"'”»)]?$")
_ENGLISH = {"the", "and", "of", "to", "is", "that", "with", "this", "are", "be", "by", "for", "if", "it",
            "not", "or", "on", "as", "you", "which", "from", "will", "can", "an", "when", "must"}
# Languages not written in the Latin alphabet: most of a sentence's letters must be non-ASCII.
_NON_LATIN = {"ja", "ko", "zh", "ru", "uk", "be", "bg", "mk", "sr", "el", "he", "ar", "fa", "hi", "th", "ka"}


def split_sentences(paragraph: str) -> list[str]:
    """Split after . ! ? followed by a capital letter, or after 。！？; not after a known
    abbreviation or a single letter ("z. B.", "e.g.")."""
    pieces, merged = _SENTENCE_BREAK.split(paragraph), []
    for piece in pieces:
        if not piece.strip():
            continue
        if merged:
            last_word = merged[-1].rsplit(None, 1)[-1].rstrip(".").lower()
            abbreviation = merged[-1].endswith(".") and (len(last_word) <= 1 or last_word in _ABBREVIATIONS)
            if abbreviation or piece.lstrip("\"'“«„(¿¡[")[:1].islower():
                merged[-1] += " " + piece
                continue
        merged.append(piece.strip())
    return merged


def looks_english(sentence: str) -> bool:
    words = re.findall(r"[a-z]+", sentence.lower())
    return len(words) >= 4 and sum(w in _ENGLISH for w in words) / len(words) >= 0.2


def keep_sentence(sentence: str, lang: str, min_chars: int, max_chars: int) -> bool:
    if not min_chars <= len(sentence) <= max_chars or UNKNOWN in sentence or "\\" in sentence:
        return False
    if not _SENTENCE_END.search(sentence) or not re.match(r"[\"'“«„(¿¡]?[^\W\d_]", sentence):
        return False
    chars = [c for c in sentence if not c.isspace()]
    if sum(c.isalpha() for c in chars) < 0.75 * len(chars):  # code, paths, option lists
        return False
    if lang.split("-")[0] in _NON_LATIN:
        letters = [c for c in chars if c.isalpha()]
        return sum(not c.isascii() for c in letters) >= 0.5 * len(letters)
    return not looks_english(sentence)


def read_page(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8")


def find_pages(roots, langs: list[str] | None) -> dict[str, list[Path]]:
    """lang code -> manual pages (sorted) under every root that exists; symbolic links are skipped
    (they point at pages already listed)."""
    pages: dict[str, list[Path]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            print(f"manpages: {root} not found, skipped")
            continue
        for lang_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            lang = lang_code(lang_dir.name)
            if lang is None or lang == "en" or (langs and lang not in langs):
                continue
            files = [p for p in lang_dir.glob("man*/*") if p.is_file() and not p.is_symlink()]
            pages.setdefault(lang, []).extend(sorted(files))
    return {lang: files for lang, files in sorted(pages.items()) if files}


def build_manpages(output: str | Path, roots=DEFAULT_ROOTS, langs=None, min_chars: int = 30,
                   max_chars: int = 300, cap_per_lang: int | None = None, seed: int = 0,
                   details: dict | None = None) -> dict[str, int]:
    """Write monolingual sentences to `output` (jsonl); returns {lang: sentences written}. `details`,
    if given, receives every language's row of the printed table."""
    langs = parse_langs(langs)
    pages = find_pages(roots, langs)
    if not pages:
        wanted = ", ".join(langs) if langs else "any language"
        raise UserError(f"no manual pages for {wanted} under {', '.join(map(str, roots))} "
                        f"(install Debian's manpages-<lang> packages)")
    missing = sorted(set(langs or ()) - set(pages))
    if missing:
        print(f"manpages: no pages for {', '.join(missing)}")
    records, rows = [], {}
    for lang, files in pages.items():
        stats, sentences = Counter(), set()
        for path in files:
            try:
                source = read_page(path)
            except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError):
                stats["unreadable"] += 1
                continue
            stats["pages"] += 1
            for paragraph in roff_paragraphs(source):
                for sentence in split_sentences(paragraph):
                    stats["sentences"] += 1
                    if keep_sentence(sentence, lang, min_chars, max_chars):
                        sentences.add(sentence)
        kept = seeded_sample(sentences, cap_per_lang, seed, lang)
        records += [{"text": text, "lang": lang} for text in kept]
        rows[lang] = {"pages": stats["pages"], "unreadable": stats["unreadable"],
                      "sentences": stats["sentences"], "unique": len(sentences), "written": len(kept)}
    write_jsonl(output, records)
    print_table(f"manual-page sentences -> {output}", rows)
    if details is not None:
        details.update(rows)
    return {lang: row["written"] for lang, row in rows.items()}
