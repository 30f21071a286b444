"""The `dist-lacl data ...` builders on tiny fixtures written here (a .mo catalog, roff pages, reST
sources, Debian FAQ pages), with outputs written out by hand; then once on the installed Debian files."""

import argparse
import gettext
import gzip
import json
import shutil
import struct
from pathlib import Path

import pytest

from dist_lacl.builders import cli, debian_faq, debian_reference, gettext_pairs, manpages, python_docs
from dist_lacl.builders.common import lang_code, seeded_sample
from dist_lacl.data.read import read_records
from dist_lacl.errors import UserError


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def build_twice(build, tmp_path: Path, name: str, **kwargs) -> bytes:
    """Run a builder into two places and check the files are byte-identical; returns the bytes."""
    build(tmp_path / "a" / name, **kwargs)
    build(tmp_path / "b" / name, **kwargs)
    first, second = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
    assert first == second
    return first


# ------------------------------------------------------------------------------------- common

def test_lang_codes():
    assert [lang_code(n) for n in ["de", "pt_BR", "zh_CN", "kab"]] == ["de", "pt-br", "zh-cn", "kab"]
    assert [lang_code(n) for n in ["sr@latin", "en@quot", "man1", "locale.alias"]] == [None] * 4


def test_seeded_sample_ignores_input_order_and_seeds_per_key():
    items = [f"s{i}" for i in range(20)]
    assert seeded_sample(items, 5, 0, "de") == seeded_sample(reversed(items), 5, 0, "de")
    assert seeded_sample(items, 5, 0, "de") != seeded_sample(items, 5, 1, "de")
    assert sorted(seeded_sample(items, None, 0, "de")) == sorted(items)
    sample = seeded_sample(items, 5, 0, "de")
    assert len(set(sample) & set(seeded_sample([i for i in items if i != sample[0]], 5, 0, "de"))) == 4


# ------------------------------------------------------------------------------------- gettext

def write_mo(path: Path, messages: dict[str, str], charset: str = "UTF-8") -> None:
    """A GNU .mo file: header, table of (length, offset) for msgids then msgstrs, then the strings."""
    messages = {"": f"Content-Type: text/plain; charset={charset}\n", **messages}
    keys = sorted(messages)
    ids = [k.encode(charset) for k in keys]
    strs = [messages[k].encode(charset) for k in keys]
    n = len(keys)
    data_start = 28 + 16 * n
    table, blob = [], b""
    for s in ids + strs:
        table.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"".join(struct.pack("<2I", *t) for t in table) + blob)


@pytest.fixture
def locale_root(tmp_path) -> Path:
    root = tmp_path / "locale"
    write_mo(root / "de/LC_MESSAGES/app.mo", {
        "Open the file": "Datei öffnen",
        "_Save the document": "Dokument _speichern",             # mnemonics removed
        "Too short": "Zu kurz",                                   # 2 words < min_words
        "%s: %d of %s": "%s: %d von %s",                          # dominated by placeholders
        "Cannot open file %s": "Kann Datei nicht öffnen",         # placeholder lost
        "Cannot read file %2$s in %1$s": "Datei %1$s: %2$s kann nicht gelesen werden",  # reordered: kept
        "Untranslated string here": "Untranslated string here",   # text == en
        "One file was found\0%d files were found": "Eine Datei\0%d Dateien",  # plural entry
        "menu\x04Open the file now": "Datei jetzt öffnen",         # context entry
        "--verbose print more messages": "--verbose mehr Meldungen ausgeben",  # option help line
        "Show {count} hidden items": "{count} versteckte Einträge anzeigen",
    })
    write_mo(root / "de/LC_MESSAGES/other.mo", {
        "Open the file": "Datei öffnen",                           # duplicate pair
        "Open the  file": "Die Datei öffnen",                      # a second translation: kept
    })
    write_mo(root / "fr/LC_MESSAGES/app.mo", {"Open the created file": "Ouvrir le fichier créé"}, charset="ISO-8859-1")
    write_mo(root / "pt_BR/LC_MESSAGES/app.mo", {"Open the file": "Abrir o arquivo"})
    write_mo(root / "sr@latin/LC_MESSAGES/app.mo", {"Open the file": "Otvori datoteku"})
    write_mo(root / "en_GB/LC_MESSAGES/app.mo", {"Open the colour file": "Open the colour file"})
    return root


def test_write_mo_is_a_real_catalog(locale_root):
    with open(locale_root / "de/LC_MESSAGES/app.mo", "rb") as f:
        catalog = gettext.GNUTranslations(f)
    assert catalog.gettext("Open the file") == "Datei öffnen"
    assert catalog.ngettext("One file was found", "%d files were found", 2) == "%d Dateien"


def test_gettext_pairs_filters_and_dedup(locale_root, tmp_path):
    counts = gettext_pairs.build_gettext_pairs(tmp_path / "p.jsonl", [locale_root], langs=None)
    assert counts == {"de": 5, "fr": 1, "pt-br": 1}
    records = read_jsonl(tmp_path / "p.jsonl")
    assert [r["lang"] for r in records] == ["de"] * 5 + ["fr", "pt-br"]
    assert sorted((r["en"], r["text"]) for r in records if r["lang"] == "de") == [
        ("Cannot read file %2$s in %1$s", "Datei %1$s: %2$s kann nicht gelesen werden"),
        ("Open the file", "Datei öffnen"),
        ("Open the file", "Die Datei öffnen"),
        ("Save the document", "Dokument speichern"),
        ("Show {count} hidden items", "{count} versteckte Einträge anzeigen"),
    ]
    assert records[5] == {"en": "Open the created file", "text": "Ouvrir le fichier créé", "lang": "fr"}  # latin-1
    assert len(list(read_records(tmp_path / "p.jsonl", "parallel"))) == 7


def test_gettext_pairs_langs_cap_and_determinism(locale_root, tmp_path):
    kwargs = dict(roots=[locale_root, tmp_path / "absent"], langs="de,pt_BR,xx", cap_per_lang=2, seed=3)
    data = build_twice(gettext_pairs.build_gettext_pairs, tmp_path, "p.jsonl", **kwargs)
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert [r["lang"] for r in records] == ["de", "de", "pt-br"]
    other_seed = gettext_pairs.build_gettext_pairs(tmp_path / "c.jsonl", **{**kwargs, "seed": 4})
    assert other_seed == {"de": 2, "pt-br": 1}
    with pytest.raises(UserError, match="no gettext catalogs"):
        gettext_pairs.build_gettext_pairs(tmp_path / "d.jsonl", [locale_root], langs="ko")


def test_placeholders():
    assert gettext_pairs.placeholders("%1$s copied to %2$d, 100%% {0} %(name)s") == ["%(name)s", "%d", "%s", "{0}"]
    assert gettext_pairs.keep_pair("Copied %s files", "%s Dateien kopiert", 2, 40)
    assert not gettext_pairs.keep_pair("Copied %s files", "%d Dateien kopiert", 2, 40)
    assert not gettext_pairs.keep_pair("%s: %s", "%s : %s", 1, 40)


# ------------------------------------------------------------------------------------- manpages

GERMAN_PAGE = r""".\" -*- coding: UTF-8 -*-
.TH TOOL 1 "2024" "tool 1.0" "Benutzerbefehle"
.SH BEZEICHNUNG
tool \- ein kleines Werkzeug
.SH BESCHREIBUNG
.B tool
liest Dateien und schreibt eine Zusammenfassung.
Das ist z.\& B. für Protokolle nützlich. Es gibt viele Gr\(:o\(ssen und \[u00C4]nderungen.
.PP
Die Ausgabe erfolgt in \fBfetter\fP Schrift und mit \fIkursiven\fR Wörtern.
.TP
\fB\-v\fP, \fB\-\-verbose\fP
Ausführliche Meldungen über den Fortschritt ausgeben.
.nf
Das ist ein Beispiel, das nicht im Text landen soll.
.fi
.PP
The quick brown fox is one of the English sentences that should be dropped here.
Ein unbekanntes Zeichen \(xx macht diesen Satz ungültig.
.SH "SIEHE AUCH"
.BR cat (1),
.BR less (1)
"""

JAPANESE_PAGE = """.TH X 1
.SH 説明
これは日本語の説明文で、行の途中で
改行されています。二番目の文もここにあります。
This English sentence is not Japanese at all.
"""


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


@pytest.fixture
def man_root(tmp_path) -> Path:
    root = tmp_path / "man"
    write_gz(root / "de/man1/tool.1.gz", GERMAN_PAGE)
    write_gz(root / "de/man8/tool-copy.8.gz", GERMAN_PAGE)      # the same sentences again: deduplicated
    (root / "de/man1/alias.1.gz").symlink_to("tool.1.gz")       # skipped
    write_gz(root / "ja/man1/x.1.gz", JAPANESE_PAGE)
    write_gz(root / "man1/english.1.gz", GERMAN_PAGE)            # not a language folder
    return root


def test_roff_to_sentences():
    sentences = [s for p in manpages.roff_paragraphs(GERMAN_PAGE) for s in manpages.split_sentences(p)]
    assert sentences == [
        "tool - ein kleines Werkzeug",
        "tool liest Dateien und schreibt eine Zusammenfassung.",
        "Das ist z. B. für Protokolle nützlich.",
        "Es gibt viele Größen und Änderungen.",
        "Die Ausgabe erfolgt in fetter Schrift und mit kursiven Wörtern.",
        "Ausführliche Meldungen über den Fortschritt ausgeben.",
        "The quick brown fox is one of the English sentences that should be dropped here.",
        "Ein unbekanntes Zeichen \ufffd macht diesen Satz ungültig.",
        "cat(1), less(1)",
    ]


def test_manpages_builder(man_root, tmp_path):
    data = build_twice(manpages.build_manpages, tmp_path, "m.jsonl", roots=[man_root], min_chars=10)
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert sorted((r["lang"], r["text"]) for r in records) == [
        ("de", "Ausführliche Meldungen über den Fortschritt ausgeben."),
        ("de", "Das ist z. B. für Protokolle nützlich."),
        ("de", "Die Ausgabe erfolgt in fetter Schrift und mit kursiven Wörtern."),
        ("de", "Es gibt viele Größen und Änderungen."),
        ("de", "tool liest Dateien und schreibt eine Zusammenfassung."),
        ("ja", "これは日本語の説明文で、行の途中で改行されています。"),  # no space where the line broke
        ("ja", "二番目の文もここにあります。"),
    ]
    capped = manpages.build_manpages(tmp_path / "c.jsonl", [man_root], langs="de", min_chars=40, cap_per_lang=1)
    assert capped == {"de": 1}
    assert len(read_jsonl(tmp_path / "c.jsonl")[0]["text"]) >= 40
    with pytest.raises(UserError, match="manpages-<lang>"):
        manpages.build_manpages(tmp_path / "d.jsonl", [man_root], langs="fr")


# ------------------------------------------------------------------------------------- python docs

FAQ_RST = """:tocdepth: 2

==================
General Python FAQ
==================

.. only:: html

   .. contents::

What is Python?
---------------

Python is an interpreted, interactive, object-oriented programming language that
incorporates modules, exceptions and *dynamic typing*. See :ref:`the tutorial <tutorial-index>`.

Why is it called Python?
------------------------

When he began implementing Python, Guido van Rossum was also reading the published scripts
from "Monty Python's Flying Circus". He wanted a short and **slightly mysterious** name.

Is it short?
------------

Yes.
"""

OS_RST = """:mod:`os` --- Operating system interfaces
=========================================

.. module:: os
   :synopsis: Miscellaneous operating system interfaces.

This module provides a portable way of using operating system dependent
functionality, see :func:`~os.path.join` and ``os.stat``::

   import os
   os.stat("x")

.. function:: getcwd()

   Return a string representing the current working directory of the process.

Examples
--------

>>> import os
>>> os.getcwd()
'/home'

The examples show how to call functions of the operating system module in a portable way.
"""

SYS_RST = """:mod:`sys` --- System parameters
=================================

Examples
--------

The examples print the version of the interpreter and the path used to find modules, in order.

.. code-block:: python

   print(sys.version)
"""


@pytest.fixture
def rst_root(tmp_path) -> Path:
    root = tmp_path / "_sources"
    for name, text in {"faq/general.rst.txt": FAQ_RST, "library/os.rst.txt": OS_RST,
                       "library/sys.rst.txt": SYS_RST}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_python_docs_pairs(rst_root, tmp_path):
    data = build_twice(python_docs.build_python_docs, tmp_path, "ir.jsonl", sources=rst_root, num_negatives=2,
                       min_chars=40)
    records = [json.loads(line) for line in data.decode().splitlines()]
    positives = [(r["query_id"], r["query"], r["positive_passages"]) for r in records]
    assert positives == [
        ("q:faq/general#2", "What is Python?", [{
            "docid": "faq/general#2", "title": "General Python FAQ",
            "text": "Python is an interpreted, interactive, object-oriented programming language that "
                    "incorporates modules, exceptions and dynamic typing. See the tutorial."}]),
        ("q:faq/general#3", "Why is it called Python?", [{
            "docid": "faq/general#3", "title": "General Python FAQ",
            "text": "When he began implementing Python, Guido van Rossum was also reading the published "
                    "scripts from \"Monty Python's Flying Circus\". He wanted a short and slightly mysterious name."}]),
        ("q:library/os#1", "os — Operating system interfaces", [{
            "docid": "library/os#1", "title": "",
            "text": "This module provides a portable way of using operating system dependent functionality, "
                    "see join and os.stat: Return a string representing the current working directory of the "
                    "process."}]),
        ("q:library/os#2", "Examples (os — Operating system interfaces)", [{
            "docid": "library/os#2", "title": "os — Operating system interfaces",
            "text": "The examples show how to call functions of the operating system module in a portable way."}]),
        ("q:library/sys#2", "Examples (sys — System parameters)", [{
            "docid": "library/sys#2", "title": "sys — System parameters",
            "text": "The examples print the version of the interpreter and the path used to find modules, "
                    "in order."}]),
    ]
    for r in records:
        negatives = [p["docid"] for p in r["negative_passages"]]
        assert len(negatives) == 2 and r["positive_passages"][0]["docid"] not in negatives
    assert len(list(read_records(tmp_path / "a" / "ir.jsonl", "ir"))) == 5


def test_python_docs_caps_passages(rst_root, tmp_path):
    python_docs.build_python_docs(tmp_path / "ir.jsonl", rst_root, num_negatives=1, min_chars=40, max_chars=50)
    texts = [r["positive_passages"][0]["text"] for r in read_jsonl(tmp_path / "ir.jsonl")]
    assert texts[0] == "Python is an interpreted, interactive,"
    assert all(len(t) <= 50 for t in texts)
    with pytest.raises(UserError, match="python3.11-doc"):
        python_docs.build_python_docs(tmp_path / "x.jsonl", tmp_path / "absent")


def test_bm25_negatives_by_hand():
    passages = ["how to bake an apple pie", "apple trees grow in orchards", "the car engine needs oil",
                "apple pie with cream and apple slices", "ships sail on the sea", "trains run on rails"]
    # "apple pie": passage 3 shares both words; the rest tie at 0 and go by index, the positive 0 excluded.
    assert python_docs.mine_negatives(["apple pie", "car oil"], passages, [0, 2], 2) == [[3, 1], [0, 1]]


# ------------------------------------------------------------------------------------- Debian FAQ

def faq_page(lang: str, chapter: str, sections: list[tuple[str, str, str, int]]) -> str:
    """A DocBook chapter page as the Debian FAQ packages install it; sections: (id, number+heading,
    body html, heading level)."""
    body = "".join(
        f'<div class="section"><div class="titlepage"><div><div><h{level} class="title">'
        f'<a id="{sid}"></a>{heading}</h{level}></div></div></div>{html}</div>'
        for sid, heading, html, level in sections)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><html lang="{lang}"><head><title>{chapter}</title></head><body>'
        f'<div class="navheader"><table><tr><th>{chapter}</th></tr></table></div>'
        f'<div class="chapter"><div class="titlepage"><h1 class="title"><a id="basics"></a>{chapter}</h1></div>'
        f'<div class="toc"><p><strong>Table of Contents</strong></p><dl class="toc"><dt>1.1. Anything?</dt></dl></div>'
        f'{body}<div class="footnotes"><p><sup>[1]</sup> A footnote.</p></div></div>'
        f'<div class="navfooter"><table><tr><td>Prev</td><td>Next</td></tr></table></div></body></html>')


@pytest.fixture
def faq_root(tmp_path) -> Path:
    root = tmp_path / "FAQ"
    root.mkdir()
    (root / "basics.en.html").write_text(faq_page("en", "Chapter 1. Basics", [
        ("what", "1.1. What is Debian?", "<p>Debian is a <em>free</em> operating\nsystem.<sup>[1]</sup></p>", 2),
        ("why", "1.2. Why use <code>apt</code>?", "<p>It installs packages.</p><pre>apt install x</pre>", 2),
        ("who", "1.3. Who makes Debian?", "<p>Volunteers from many countries.</p>", 2),
        ("feedback", "1.4. Feedback", "<p>Write to the mailing list.</p>", 2),
        ("deep", "1.4.1. How deep can sections go?", "<ul><li><p>Three</p></li><li><p>levels.</p></li></ul>", 3),
    ]))
    (root / "de").mkdir()
    (root / "de/basics.de.html").write_text(faq_page("de", "Kapitel 1. Grundlagen", [
        ("what", "1.1. Was ist Debian?", "<p>Debian ist ein <em>freies</em> Betriebssystem.</p>", 2),
        ("why", "1.2. Warum <code>apt</code> verwenden?", "<p>It installs packages.</p><pre>apt install x</pre>", 2),
        ("who", "1.3. Wer macht Debian?", "<p>Freiwillige aus vielen Ländern.</p>", 2),
        ("feedback", "1.4. Rückmeldungen", "<p>Schreiben Sie an die Mailingliste.</p>", 2),
        ("deep", "1.4.1. Wie tief gehen Abschnitte?", "<ul><li><p>Drei</p></li><li><p>Ebenen.</p></li></ul>", 3),
    ]))
    (root / "ja").mkdir()
    (root / "ja/basics.ja.html").write_text(faq_page("ja", "第1章 基本", [
        ("what", "1.1. Debian とは何?", "<p>Debian は自由なオペレーティングシステムです。</p>", 2),
        ("why", "1.2. Why use <code>apt</code>?", "<p>パッケージをインストールします。</p>", 2),  # untranslated heading
        ("who", "1.3. 誰が Debian を作るの?", "<p>多くの国のボランティアです。</p>", 2),
        ("feedback", "1.4. フィードバック", "<p>メーリングリストに書いてください。</p>", 2),
    ]))  # no "deep": not aligned
    return root


def test_debian_faq_sets(faq_root, tmp_path):
    counts = debian_faq.build_debian_faq(tmp_path / "a", faq_root, langs="de,ja", min_chars=5)
    assert counts == {"en": 3, "de": 3, "ja": 2}
    out = tmp_path / "a"
    assert read_jsonl(out / "to_english/corpus.jsonl") == [
        {"docid": "what", "title": "", "text": "Debian is a free operating system.", "lang": "en"},
        {"docid": "why", "title": "", "text": "It installs packages. apt install x", "lang": "en"},
        {"docid": "who", "title": "", "text": "Volunteers from many countries.", "lang": "en"},
        {"docid": "feedback", "title": "", "text": "Write to the mailing list.", "lang": "en"},
        {"docid": "deep", "title": "", "text": "Three levels.", "lang": "en"},
    ]
    assert [(q["query_id"], q["query"]) for q in read_jsonl(out / "to_english/queries.jsonl")] == [
        ("en-what", "What is Debian?"), ("en-why", "Why use apt?"), ("en-who", "Who makes Debian?"),
        ("de-what", "Was ist Debian?"), ("de-why", "Warum apt verwenden?"), ("de-who", "Wer macht Debian?"),
        ("ja-what", "Debian とは何?"), ("ja-who", "誰が Debian を作るの?"),
    ]
    assert (out / "to_english/qrels.txt").read_text().splitlines() == [
        "en-what 0 what 1", "en-why 0 why 1", "en-who 0 who 1", "de-what 0 what 1", "de-why 0 why 1",
        "de-who 0 who 1", "ja-what 0 what 1", "ja-who 0 who 1"]
    # Same language: the German answer of "why" was left in English, so that query is not in de's set.
    assert (out / "same_language/de/qrels.txt").read_text().splitlines() == ["de-what 0 what 1", "de-who 0 who 1"]
    assert [d["docid"] for d in read_jsonl(out / "same_language/ja/corpus.jsonl")] == ["what", "why", "who", "feedback"]
    assert read_jsonl(out / "same_language/ja/queries.jsonl")[0] == {
        "query_id": "ja-what", "query": "Debian とは何?", "lang": "ja"}
    debian_faq.build_debian_faq(tmp_path / "b", faq_root, langs="de,ja", min_chars=5)
    for f in sorted(out.rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(out)).read_bytes()


def test_debian_faq_missing_language(faq_root, tmp_path):
    with pytest.raises(UserError, match="debian-faq-ko"):
        debian_faq.build_debian_faq(tmp_path / "x", faq_root, langs="ko")


# ------------------------------------------------------------------------------------- CLI

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dist-lacl")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_runs_a_builder(locale_root, tmp_path):
    args = make_parser().parse_args(["data", "gettext", "-o", str(tmp_path / "p.jsonl"), "--locale-dir",
                                     str(locale_root), "--langs", "de,fr", "--cap", "0"])
    assert args.func(args) == {"de": 5, "fr": 1}
    for command in ["python-docs", "gettext", "manpages", "debian-faq", "debian-reference", "all"]:
        assert make_parser().parse_args(["data", command, "-o", "x"]).func.__name__.startswith("run_")


def test_ensure_debian_packages(monkeypatch):
    monkeypatch.setattr(cli, "_installed", lambda name: name == "present")
    cli.ensure_debian_packages(["present"])  # nothing to do, apt not touched
    monkeypatch.setattr(cli.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="no apt-get here"):
        cli.ensure_debian_packages(["present", "absent-package"])


def test_data_packages():
    assert cli.data_packages("de,ko,pt-br", "en,ja") == [
        "python3.11-doc", "gcc-12-locales", "debian-faq", "debian-faq-ja", "manpages-de", "manpages-pt-br"]


# ------------------------------------------------------------------------------------- installed files

def installed(path: str) -> Path:
    if not Path(path).exists():
        pytest.skip(f"{path} not installed (Debian package missing); `dist-lacl data all` installs it")
    return Path(path)


def test_real_debian_faq(tmp_path):
    root = installed(debian_faq.DEFAULT_ROOT + "/de")
    counts = debian_faq.build_debian_faq(tmp_path, root.parent, langs="de")
    assert counts["en"] >= 100 and counts["de"] >= 100


def test_real_python_faq(tmp_path):
    faq = installed(python_docs.DEFAULT_SOURCES + "/faq")
    shutil.copytree(faq, tmp_path / "sources/faq")  # the FAQ part only, to keep BM25 mining quick
    counts = python_docs.build_python_docs(tmp_path / "ir.jsonl", tmp_path / "sources", num_negatives=3)
    assert counts["faq"] >= 150
    assert len(list(read_records(tmp_path / "ir.jsonl", "ir"))) == counts["faq"] + counts["section"]


def test_real_gettext_and_manpages(tmp_path):
    installed("/usr/share/locale/de/LC_MESSAGES")
    assert gettext_pairs.build_gettext_pairs(tmp_path / "p.jsonl", langs="de", cap_per_lang=100) == {"de": 100}
    assert len(list(read_records(tmp_path / "p.jsonl", "parallel"))) == 100
    installed("/usr/share/man/it/man1")
    assert manpages.build_manpages(tmp_path / "m.jsonl", langs="it", cap_per_lang=100) == {"it": 100}
    assert len(list(read_records(tmp_path / "m.jsonl", "monolingual"))) == 100


# ------------------------------------------------------------------------------------- breadth

def test_gettext_min_pairs_leaves_out_small_languages(locale_root, tmp_path):
    details = {}
    counts = gettext_pairs.build_gettext_pairs(tmp_path / "p.jsonl", [locale_root], "de,fr", min_unique=2,
                                               details=details)
    assert counts == {"de": 5}  # fr has 1 unique pair
    assert {r["lang"] for r in read_jsonl(tmp_path / "p.jsonl")} == {"de"}
    assert details["fr"] == {"catalogs": 1, "entries": 1, "unique": 1, "written": 0}
    assert details["de"]["unique"] == details["de"]["written"] == 5
    with pytest.raises(UserError, match="at least 6 unique"):
        gettext_pairs.build_gettext_pairs(tmp_path / "q.jsonl", [locale_root], "de,fr", min_unique=6)
    assert not (tmp_path / "q.jsonl").exists()


def test_django_roots(monkeypatch):
    roots = gettext_pairs.django_roots()
    if not roots:
        pytest.skip("Django is not installed (the demo extra installs it)")
    assert roots[0].endswith("conf/locale") and all(Path(r).is_dir() for r in roots)
    assert list(Path(roots[0]).glob("de/LC_MESSAGES/django.mo"))
    monkeypatch.setattr(gettext_pairs.importlib.util, "find_spec", lambda name: None)
    assert gettext_pairs.django_roots() == []


def test_breadth_options_resolve():
    args = make_parser().parse_args(["data", "all", "-o", "x"])
    cli._resolve_breadth(args)
    assert (args.parallel_langs, args.monolingual_langs, args.min_pairs, args.debian_reference) == (
        cli.PARALLEL_LANGS, cli.MONOLINGUAL_LANGS, 0, False)  # the demo's data, unchanged
    args = make_parser().parse_args(["data", "all", "-o", "x", "--breadth", "--monolingual-langs", "de"])
    cli._resolve_breadth(args)
    assert (args.parallel_langs, args.monolingual_langs, args.min_pairs, args.debian_reference) == ("", "de", 2000, True)
    assert len(cli.BREADTH_MONOLINGUAL_LANGS.split(",")) == 27
    assert cli.data_packages("de", "en", "de,pt-br")[-3:] == [
        "debian-reference-en", "debian-reference-de", "debian-reference-pt-br"]


@pytest.fixture
def reference_root(tmp_path) -> Path:
    """The Debian Reference's installed layout: every language's chapter pages in one folder."""
    root = tmp_path / "debian-reference"
    root.mkdir()
    pages = {
        "apa.en": [("the maze", "A.1. The Debian maze", "<p>Debian is a maze.</p>", 2)],  # a space in the id
        "ch01.en": [("cfg", "1.1. Package configuration", "<p>Configure packages with debconf.</p>", 2),
                    ("basics1", "1.1.1. Basics", "<p>First basics text.</p>", 3),
                    ("archive", "1.2. Archive basics", "<p>The archive holds every package of the release.</p>", 2),
                    ("basics2", "1.2.1. Basics", "<p>Second basics text.</p>", 3)],  # a repeated title: no query
        "apa.de": [("the maze", "A.1. Das Debian-Labyrinth", "<p>Debian ist ein Labyrinth.</p>", 2)],
        "ch01.de": [("cfg", "1.1. Paketkonfiguration", "<p>Pakete mit debconf konfigurieren.</p>", 2),
                    ("basics1", "1.1.1. Grundlagen", "<p>Erste Grundlagen.</p>", 3),
                    ("archive", "1.2. Grundlagen des Archivs", "<p>The archive holds every package of the release.</p>", 2),
                    ("basics2", "1.2.1. Grundlagen", "<p>Zweite Grundlagen.</p>", 3)],
        "apa.ja": [("the maze", "A.1. Debian の迷路", "<p>Debian は迷路です。</p>", 2)],
        "ch01.ja": [("cfg", "1.1. パッケージ設定", "<p>debconf でパッケージを設定します。</p>", 2),
                    ("archive", "1.2. Archive basics", "<p>アーカイブ。</p>", 2)],  # title left in English
    }
    for name, sections in pages.items():
        (root / f"{name}.html").write_text(faq_page(name.split(".")[1], "Chapter", sections))
    return root


def test_debian_reference_sets(reference_root, tmp_path):
    out = tmp_path / "a"
    counts = debian_reference.build_debian_reference(out, reference_root, langs="de,ja", min_chars=5)
    assert counts == {"en": 3, "de": 3, "ja": 2}
    assert [(d["docid"], d["text"]) for d in read_jsonl(out / "to_english/corpus.jsonl")] == [
        ("the_maze", "Debian is a maze."), ("cfg", "Configure packages with debconf."),
        ("basics1", "First basics text."), ("archive", "The archive holds every package of the release."),
        ("basics2", "Second basics text.")]
    assert [(q["query_id"], q["query"]) for q in read_jsonl(out / "to_english/queries.jsonl")] == [
        ("en-the_maze", "The Debian maze"), ("en-cfg", "Package configuration"), ("en-archive", "Archive basics"),
        ("de-the_maze", "Das Debian-Labyrinth"), ("de-cfg", "Paketkonfiguration"),
        ("de-archive", "Grundlagen des Archivs"), ("ja-the_maze", "Debian の迷路"), ("ja-cfg", "パッケージ設定")]
    assert (out / "to_english/qrels.txt").read_text().splitlines()[3] == "de-the_maze 0 the_maze 1"
    # de's "archive" text was left in English: not a same-language query.
    assert (out / "same_language/de/qrels.txt").read_text().splitlines() == ["de-the_maze 0 the_maze 1", "de-cfg 0 cfg 1"]
    assert [d["docid"] for d in read_jsonl(out / "same_language/ja/corpus.jsonl")] == ["the_maze", "cfg", "archive"]
    debian_reference.build_debian_reference(tmp_path / "b", reference_root, langs="de,ja", min_chars=5)
    for f in sorted(out.rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(out)).read_bytes()
    # Texts are cut at max_chars, at a space.
    debian_reference.build_debian_reference(tmp_path / "c", reference_root, langs="de", min_chars=5, max_chars=20)
    assert read_jsonl(tmp_path / "c/to_english/corpus.jsonl")[3]["text"] == "The archive holds"
    with pytest.raises(UserError, match="debian-reference-ko"):
        debian_reference.build_debian_reference(tmp_path / "x", reference_root, langs="ko")


def test_cli_debian_reference_writes_a_manifest(reference_root, tmp_path):
    out = tmp_path / "ref"
    args = make_parser().parse_args(["data", "debian-reference", "-o", str(out), "--root", str(reference_root),
                                     "--langs", "ja", "--min-chars", "5"])
    assert args.func(args) == {"en": 3, "ja": 2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"en": 3, "ja": 2} and manifest["written"] == ["same_language", "to_english"]


def test_real_debian_reference(tmp_path):
    root = installed(debian_reference.DEFAULT_ROOT + "/ch01.de.html").parent
    counts = debian_reference.build_debian_reference(tmp_path, root, langs="de")
    assert counts["en"] >= 300 and counts["de"] >= 300
    from dist_lacl.evaluation.evaluate import load_dev_set

    for split in (tmp_path / "to_english", tmp_path / "same_language/de"):  # ids the evaluation accepts
        load_dev_set(split / "queries.jsonl", split / "corpus.jsonl", split / "qrels.txt")
