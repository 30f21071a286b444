"""A zero-shot multilingual evaluation set from the Debian FAQ and its translations (Debian packages
`debian-faq` and `debian-faq-<lang>`: DocBook HTML in /usr/share/doc/debian/FAQ/*.en.html and
/usr/share/doc/debian/FAQ/<lang>/*.<lang>.html).

Every translation keeps the English section ids, which align the questions. A section is a query
when its English heading asks a question and every requested language has it; a language's query
is dropped where its heading was left in English. Two outputs:
  to_english/            corpus = the English answers (docid = section id), queries = the question
                         in every language (query_id `de-<section>`), qrels = its section's answer;
  same_language/<lang>/  corpus = the answers in that language, queries = its questions, for the
                         sections whose answer is translated too.
Files: corpus.jsonl {"docid","title","text","lang"}, queries.jsonl {"query_id","query","lang"},
qrels.txt (TREC: `qid 0 docid 1`). Sections that are not questions stay in the corpora as distractors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..atomic import write_text
from ..errors import UserError
from .common import parse_langs, print_table, write_jsonl

DEFAULT_ROOT = "/usr/share/doc/debian/FAQ"
LANGS = ("en", "de", "fr", "it", "ja", "ko", "nl", "pt", "ru", "zh-cn")

_SKIPPED_DIVS = {"navheader", "navfooter", "toc", "footnotes"}
_BLOCKS = {"p", "div", "li", "dt", "dd", "pre", "tr", "td", "th", "br", "table", "ul", "ol", "dl"}


@dataclass
class Section:
    id: str
    question: str
    """The heading without its number ("1.2. What is Debian?" -> "What is Debian?")."""
    answer: str
    """The text from the heading to the next heading, footnote markers and navigation left out."""


class _SectionParser(HTMLParser):
    """Collects (id, heading, text) for the h2-h6 headings of a DocBook chapter page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[dict] = []
        self.heading_tag = None   # set while inside a heading
        self.skip_depth = 0       # > 0 inside navigation, a table of contents, footnotes or a <sup>
        self.in_body = False      # after the first h2-h6 heading

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.skip_depth:
            self.skip_depth += tag in ("div", "sup")
        elif (tag == "div" and attrs.get("class") in _SKIPPED_DIVS) or tag == "sup":
            self.skip_depth = 1
        elif re.fullmatch(r"h[2-6]", tag) and attrs.get("class") == "title":
            self.heading_tag, self.in_body = tag, True
            self.sections.append({"id": None, "heading": [], "text": []})
        elif tag == "a" and self.heading_tag and "id" in attrs and self.sections[-1]["id"] is None:
            self.sections[-1]["id"] = attrs["id"]
        elif tag in _BLOCKS and self.in_body:
            self.sections[-1]["text"].append(" ")

    def handle_endtag(self, tag):
        if self.skip_depth:
            self.skip_depth -= tag in ("div", "sup")
        elif tag == self.heading_tag:
            self.heading_tag = None

    def handle_data(self, data):
        if self.skip_depth or not self.in_body:
            return
        self.sections[-1]["heading" if self.heading_tag else "text"].append(data)


def _squash(parts: list[str]) -> str:
    return " ".join("".join(parts).split())


def parse_page(html: str) -> list[Section]:
    parser = _SectionParser()
    parser.feed(html)
    parser.close()
    return [Section(s["id"], re.sub(r"^\d+(\.\d+)*\.?\s+", "", _squash(s["heading"])), _squash(s["text"]))
            for s in parser.sections if s["id"]]


def read_language(root: Path, lang: str) -> dict[str, Section]:
    """section id -> Section, for one language's pages (files sorted, so the order is fixed)."""
    folder, pattern = (root, "*.en.html") if lang == "en" else (root / lang, f"*.{lang}.html")
    files = sorted(folder.glob(pattern))
    if not files:
        package = "debian-faq" if lang == "en" else f"debian-faq-{lang}"
        raise UserError(f"{folder}: no Debian FAQ pages {pattern} for '{lang}' (install Debian's {package})")
    sections = {}
    for path in files:
        for s in parse_page(path.read_text(encoding="utf-8")):
            sections.setdefault(s.id, s)
    return sections


def _write_split(folder: Path, corpus: list[dict], queries: list[dict], answers: list[str]) -> None:
    """corpus.jsonl, queries.jsonl and qrels.txt (query i is answered by docid answers[i])."""
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    write_text(folder / "qrels.txt", "".join(f"{q['query_id']} 0 {docid} 1\n"
                                             for q, docid in zip(queries, answers)))


def build_debian_faq(output: str | Path, root: str | Path = DEFAULT_ROOT, langs=LANGS,
                     min_chars: int = 20) -> dict[str, int]:
    """Write the two evaluation sets under `output`; returns {lang: queries in to_english}."""
    root, output = Path(root), Path(output)
    if not root.is_dir():
        raise UserError(f"{root}: Debian FAQ not found (install Debian's debian-faq and debian-faq-<lang>)")
    langs = ["en"] + [lang for lang in parse_langs(langs) or LANGS if lang != "en"]
    pages = {lang: read_language(root, lang) for lang in langs}
    english = pages["en"]
    aligned = [sid for sid, s in english.items()
               if "?" in s.question and len(s.answer) >= min_chars and all(sid in pages[lang] for lang in langs)]

    return write_evaluation_sets(pages, aligned, langs, output, min_chars, "Debian FAQ", "answers")


def write_evaluation_sets(pages: dict[str, dict[str, Section]], aligned: list[str], langs: list[str],
                          output: Path, min_chars: int, name: str, unit: str) -> dict[str, int]:
    """The two evaluation sets of a document translated section by section (the FAQ, the Reference):
    to_english/ (a section title in L -> the English section) and same_language/<L>/ (L -> L, where the
    section is translated). Returns {lang: queries in to_english}."""
    english = pages["en"]

    def corpus(lang: str) -> list[dict]:
        return [{"docid": sid, "title": "", "text": s.answer, "lang": lang}
                for sid, s in pages[lang].items() if len(s.answer) >= min_chars]

    def queries(lang: str, sids: list[str]) -> list[dict]:
        return [{"query_id": f"{lang}-{sid}", "query": pages[lang][sid].question, "lang": lang} for sid in sids]

    to_english, to_english_answers, rows = [], [], {}
    for lang in langs:
        translated = [sid for sid in aligned if lang == "en" or pages[lang][sid].question != english[sid].question]
        to_english += queries(lang, translated)
        to_english_answers += translated
        same = [sid for sid in translated if lang != "en" and pages[lang][sid].answer != english[sid].answer
                and len(pages[lang][sid].answer) >= min_chars]
        if lang != "en":
            _write_split(output / "same_language" / lang, corpus(lang), queries(lang, same), same)
        rows[lang] = {"aligned": len(aligned), "to_english": len(translated), "same_lang": len(same)}
    english_corpus = corpus("en")
    _write_split(output / "to_english", english_corpus, to_english, to_english_answers)
    print_table(f"{name} evaluation ({len(english_corpus)} English {unit}) -> {output}", rows)
    return {lang: row["to_english"] for lang, row in rows.items()}
