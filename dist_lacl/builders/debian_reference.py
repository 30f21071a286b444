"""A second zero-shot evaluation domain: the Debian Reference and its translations (Debian packages
`debian-reference-en` and `debian-reference-<lang>`, `LANGS` by default: DocBook HTML in /usr/share/debian-reference/
*.<lang>.html, one page per chapter and appendix, every language in the same folder).

Built like the Debian FAQ set (`debian_faq`), whose page parser it reuses: the translations keep the
English section ids, which align the sections. The query is a section's title (the Reference's
headings are topics, not questions: "Paketkonfiguration"), the passage its text up to the next
heading, cut at `max_chars` (at a space). A section is a query when its text has at least
`min_chars`, its English title is unique in the book (a repeated title such as "Basics" would be an
ambiguous query) and every requested language has it; a language's query is dropped where its title
was left in English. Outputs, as for the FAQ:
  to_english/            English section texts; the title in every language -> the English text;
  same_language/<lang>/  that language's texts; its titles -> its own text, for sections whose
                         text is translated too.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..errors import UserError
from .common import parse_langs
from .debian_faq import Section, parse_page, write_evaluation_sets

DEFAULT_ROOT = "/usr/share/debian-reference"
# pt-br (debian-reference-pt-br) is left out by default: in 2.100 its titles are pt's, all 367 of them,
# and 319 of its 435 section texts too; it would count Portuguese twice in every average.
LANGS = ("en", "de", "es", "fr", "id", "it", "ja", "pt", "zh-cn", "zh-tw")


def read_language(root: Path, lang: str, max_chars: int) -> dict[str, Section]:
    """section id -> Section (text cut at max_chars) for one language's pages, files sorted."""
    files = sorted(root.glob(f"*.{lang}.html"))
    if not files:
        raise UserError(f"{root}: no Debian Reference pages *.{lang}.html for '{lang}' "
                        f"(install Debian's debian-reference-{lang})")
    sections = {}
    for path in files:
        for s in parse_page(path.read_text(encoding="utf-8")):
            # parse_page strips "2.1." from a heading; appendices number theirs "A.1.".
            title = re.sub(r"^[A-Z](\.\d+)+\.?\s+", "", s.question)
            # Ids become query ids and docids, which may not hold whitespace; a few anchors do
            # ("_customizing_vim_with internal_features").
            sid = "_".join(s.id.split())
            sections.setdefault(sid, Section(sid, title, _cut(s.answer, max_chars)))
    return sections


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    return head[:head.rfind(" ")] if " " in head else head


def build_debian_reference(output: str | Path, root: str | Path = DEFAULT_ROOT, langs=LANGS,
                           min_chars: int = 100, max_chars: int = 2000) -> dict[str, int]:
    """Write the two evaluation sets under `output`; returns {lang: queries in to_english}."""
    root, output = Path(root), Path(output)
    if not root.is_dir():
        raise UserError(f"{root}: Debian Reference not found (install Debian's debian-reference-en "
                        f"and debian-reference-<lang>)")
    langs = ["en"] + [lang for lang in parse_langs(langs) or LANGS if lang != "en"]
    pages = {lang: read_language(root, lang, max_chars) for lang in langs}
    english = pages["en"]
    title_count = Counter(s.question for s in english.values())
    aligned = [sid for sid, s in english.items() if len(s.answer) >= min_chars and s.question
               and title_count[s.question] == 1 and all(sid in pages[lang] for lang in langs)]

    return write_evaluation_sets(pages, aligned, langs, output, min_chars, "Debian Reference", "sections")
