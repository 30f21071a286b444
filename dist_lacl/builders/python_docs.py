"""English IR training data (Tevatron jsonl) from the reST sources of the Python documentation
(Debian `python3.11-doc`: /usr/share/doc/python3.11/html/_sources/**/*.rst.txt).

Two kinds of query -> passage pairs: in `faq/`, a heading that asks a question -> the section that
answers it; everywhere, a section heading -> the section's text. A heading used by several sections
("socket" in every What's New) is disambiguated with its page title, "socket (What's New In Python
3.10)"; one still ambiguous ("Examples" twice on a page) is dropped, as are sections shorter than
`min_chars`. Passages are capped at `max_chars` and carry the page title (empty when it is the query
itself). Hard negatives are the top BM25 passages for the query, the positive excluded.

Ids are stable: docid `library/os#3` is the 3rd section of library/os.rst.txt; query_id `q:` + docid.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats.records import passage_text
from .common import print_table, write_jsonl

DEFAULT_SOURCES = "/usr/share/doc/python3.11/html/_sources"

_ADORNMENT = re.compile(r"""([=\-~^"'`#*+<>:._!])\1{2,}\s*""")
_DIRECTIVE = re.compile(r"\.\.\s+([\w:-]+)::(.*)")
# Directives whose indented content is code, tables or navigation rather than prose.
_DROP_CONTENT = {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "testsetup",
                 "testcleanup", "productionlist", "toctree", "contents", "index", "literalinclude",
                 "highlight", "image", "figure", "raw", "csv-table", "list-table", "table", "tabularcolumns",
                 "sectionauthor", "moduleauthor", "parsed-literal", "audit-event", "include", "only"}
_TABLE_LINE = re.compile(r"\s*(\+[-=+]+\+|\|.*\||=+( +=+)+)\s*")
_OPTION_LINE = re.compile(r"\s*:[\w-]+:( .*)?")
_BULLET = re.compile(r"^([-*+•]|#\.|\d+\.)\s+")


@dataclass
class Section:
    path: str
    """Source path relative to the sources root, without the .rst.txt suffix."""
    index: int
    """1-based position among the file's sections."""
    heading: str
    body: str


def _role(m: re.Match) -> str:
    role, target = m.group(1), m.group(2)
    if role in ("pep", "rfc"):
        return f"{role.upper()} {target}"
    return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip("!")


def inline_text(s: str) -> str:
    """reST inline markup to plain text: roles, literals, links, emphasis, substitutions, escapes."""
    s = re.sub(r":[\w:.-]+:`([^`<]*?)\s*<[^`>]*>`", r"\1", s)   # :ref:`text <target>` -> text
    s = re.sub(r":([\w:.-]+):`([^`]*)`", _role, s)              # :func:`~os.path.join` -> join
    s = re.sub(r"``(.+?)``", r"\1", s)
    s = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", s)          # `text <url>`_ -> text
    s = re.sub(r"`([^`]+)`_{0,2}", r"\1", s)
    s = re.sub(r"\[(#\w*|\d+)\]_", "", s)                        # footnote references
    s = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])", r"\1", s)
    s = re.sub(r"\|(\w[\w -]*)\|", r"\1", s)
    s = re.sub(r"\\(.)", r"\1", s).replace(" --- ", " — ")
    return " ".join(s.split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def prose(lines: list[str]) -> str:
    """The running text of a section body: directives' prose kept; code, tables, doctests, comments,
    transitions and literal blocks (after `::`) dropped."""
    kept, skip_indent, in_doctest = [], None, False
    for line in lines:
        stripped = line.strip()
        if in_doctest:  # a doctest and its output run to the next blank line
            in_doctest = bool(stripped)
            continue
        if skip_indent is not None:
            if not stripped or _indent(line) > skip_indent:
                continue
            skip_indent = None
        if stripped == ".." or stripped.startswith(".. "):
            directive = _DIRECTIVE.match(stripped)
            if directive is None or directive.group(1) in _DROP_CONTENT:
                skip_indent = _indent(line)  # a comment, a link target, or content we do not want
            continue
        if stripped.startswith(">>>"):
            in_doctest = True
            continue
        if _TABLE_LINE.fullmatch(line) or _OPTION_LINE.fullmatch(line) or _ADORNMENT.fullmatch(stripped):
            continue
        if stripped.endswith("::"):
            skip_indent = _indent(line)  # the indented literal block that follows
            stripped = stripped[:-2].rstrip() + (":" if stripped[:-2].strip() else "")
        kept.append(_BULLET.sub("", stripped))
    return inline_text(" ".join(kept))


def parse_sections(text: str, path: str) -> list[Section]:
    """Split a reST file at its headings: a title line after a blank line, underlined with a repeated
    punctuation character at least as long, or a title (maybe indented) between two equal such lines."""
    lines = text.splitlines()
    headings = []  # (first line of the heading, including an overline; the title line)
    for i in range(len(lines) - 1):
        before, title, under = lines[i - 1] if i else "", lines[i], lines[i + 1]
        if not title.strip() or _ADORNMENT.fullmatch(title) or not _ADORNMENT.fullmatch(under):
            continue
        overlined = _ADORNMENT.fullmatch(before) is not None and before.rstrip() == under.rstrip()
        underlined = not title[0].isspace() and len(under.rstrip()) >= len(title.rstrip()) and not before.strip()
        if overlined or underlined:
            headings.append((i - 1 if overlined else i, i))
    sections = []
    for n, (_, i) in enumerate(headings):
        body_end = headings[n + 1][0] if n + 1 < len(headings) else len(lines)
        sections.append(Section(path, n + 1, inline_text(lines[i]), prose(lines[i + 2: body_end])))
    return sections


def read_sources(root: str | Path) -> list[list[Section]]:
    """Sections of every .rst.txt / .rst / .txt file under root, one list per file, files sorted."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".rst.txt", ".rst", ".txt")))
    pages = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        rel = re.sub(r"(\.rst)?(\.txt)?$", "", rel)
        pages.append(parse_sections(path.read_text(encoding="utf-8", errors="replace"), rel))
    return pages


def cap_chars(text: str, max_chars: int) -> str:
    """Cut at the last space before max_chars (so words stay whole)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def tokenize(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def mine_negatives(queries: list[str], passages: list[str], positives: list[int], num_negatives: int) -> list[list[int]]:
    """For each query, the indices of the `num_negatives` best BM25 passages other than its positive
    (and other than passages with the positive's exact text). Ties are broken by passage index."""
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([tokenize(p) for p in passages])
    negatives = []
    for query, pos in zip(queries, positives):
        scores = bm25.get_scores(tokenize(query))
        order = np.lexsort((np.arange(len(passages)), -scores))
        chosen = []
        for j in order:
            if len(chosen) == num_negatives:
                break
            if j != pos and passages[j] != passages[pos]:
                chosen.append(int(j))
        negatives.append(chosen)
    return negatives


def _queries(pages: list[list[Section]]) -> list[tuple[str, Section, str]]:
    """(page title, section, query) for every section whose query is unambiguous. A heading used
    by several sections ("socket" in each What's New) gets its page title added; one still repeated
    (two "Examples" on one page) is dropped."""
    heading_uses = Counter(s.heading.lower() for page in pages for s in page)
    titled = []
    for page in pages:
        for s in page:
            title = page[0].heading
            unique = heading_uses[s.heading.lower()] == 1 or title == s.heading
            titled.append((title, s, s.heading if unique else f"{s.heading} ({title})"))
    query_uses = Counter(query.lower() for _, _, query in titled)
    return [(title, s, query) for title, s, query in titled if query_uses[query.lower()] == 1]


def build_python_docs(output: str | Path, sources: str | Path = DEFAULT_SOURCES, num_negatives: int = 7,
                      min_chars: int = 100, max_chars: int = 1000) -> dict[str, int]:
    """Write Tevatron training records to `output`; returns {"faq": n, "section": n} (all English)."""
    if not Path(sources).is_dir():
        raise UserError(f"{sources}: Python documentation sources not found (install Debian's python3.11-doc, "
                        f"or pass the folder holding the .rst.txt files)")
    pages = read_sources(sources)
    pairs = []  # (kind, query, section, title)
    for page_title, s, query in _queries(pages):
        if len(s.body) >= min_chars and tokenize(query):
            kind = "faq" if s.path.startswith("faq/") and s.heading.endswith("?") else "section"
            pairs.append((kind, query, s, "" if page_title == s.heading else page_title))
    if not pairs:
        raise UserError(f"{sources}: no sections with a body of at least {min_chars} characters")
    passages = [{"docid": f"{s.path}#{s.index}", "title": title, "text": cap_chars(s.body, max_chars)}
                for _, _, s, title in pairs]
    texts = [passage_text(p["title"], p["text"]) for p in passages]
    queries = [query for _, query, _, _ in pairs]
    negatives = mine_negatives(queries, texts, list(range(len(pairs))), num_negatives)
    records = [{"query_id": f"q:{p['docid']}", "query": query, "positive_passages": [p],
                "negative_passages": [passages[j] for j in negs]}
               for query, p, negs in zip(queries, passages, negatives)]
    write_jsonl(output, records)
    counts = Counter(kind for kind, _, _, _ in pairs)
    rows = {f"en ({kind})": {"queries": counts[kind]} for kind in ("faq", "section")}
    print_table(f"Python-docs IR pairs ({num_negatives} BM25 negatives each) -> {output}", rows)
    return {kind: counts[kind] for kind in ("faq", "section")}
