"""`dist-lacl probe`: how much language identity a model's embeddings of parallel or multilingual text keep.

For each model: held-out language identification (nearest centroid and a linear probe; translations of
one sentence never straddle the split), the mean cosine of translation pairs against non-pairs, and the
P@1 of retrieving each sentence's translation among all of that language's pairs, both ways. The
metrics are `diagnostics`' (the ones training logs as align/*); outputs are `probe_report`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import formats
from .diagnostics import held_out_language_id, parallel_similarity, translation_retrieval
from .errors import UserError
from .formats import ReadOptions

ENGLISH = "en"
TEXT_FORMATS = ("auto", "jsonl", "tsv", "moses", "text")
"""--format: parallel jsonl/tsv/moses, monolingual jsonl/text (a jsonl file's first record says which)."""


@dataclass
class Sentences:
    """The probed sentences: row i is texts[i] in langs[i]; rows translating one English sentence share
    its group (the English row's index); a monolingual row is a group of its own."""

    texts: list[str] = field(default_factory=list)
    langs: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    pairs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """Per non-English language, (English row, translation row) of each translation pair."""
    lid_rows: list[int] = field(default_factory=list)
    """The rows language identification uses: English capped at the largest other language's count."""

    def add(self, text: str, lang: str, group: int | None = None) -> int:
        self.texts.append(text)
        self.langs.append(lang)
        self.groups.append(len(self.texts) - 1 if group is None else group)
        return len(self.texts) - 1


def text_kind(path: Path, fmt: str) -> str:
    """`parallel` or `monolingual`: a jsonl file's first record has `en` (parallel) or only `text`."""
    if fmt in ("tsv", "moses"):
        return "parallel"
    if fmt == "text":
        return "monolingual"
    if fmt == "auto" and not formats.io.is_ext(path, ".jsonl", ".json"):
        return "monolingual" if formats.io.is_ext(path, ".txt") else "parallel"
    first = formats.io.first_record(path) if path.is_file() else None
    return "monolingual" if isinstance(first, dict) and "en" not in first and "text" in first else "parallel"


def read_sentences(paths: list[str], fmt: str = "auto", lang: str | None = None, max_per_lang: int = 1000,
                   seed: int = 0) -> Sentences:
    """Every file's pairs and texts: per language a uniform sample of at most `max_per_lang` pairs (or
    texts), drawn with `seed` while reading (a file of millions of pairs is never held whole) and kept in
    file order, then each sentence's first occurrence in its language only."""
    pairs: dict[str, _Reservoir] = {}
    mono: dict[str, _Reservoir] = {}
    for name in paths:
        path = Path(name)
        if not path.exists():  # named as the user gave it, not as a training stream
            raise UserError(f"--texts {name}: file not found")
        kind = text_kind(path, fmt)
        _, records = formats.read(path, kind, ReadOptions(fmt, lang=lang))
        for _, rec in records:
            if kind == "parallel":
                pairs.setdefault(rec["lang"], _Reservoir(max_per_lang, seed, rec["lang"])).add((rec["en"], rec["text"]))
            else:
                mono.setdefault(rec["lang"], _Reservoir(max_per_lang, seed, rec["lang"])).add(rec["text"])
    out = Sentences()
    english: dict[str, int] = {}
    for xx in sorted(pairs):
        for en, text in _unique_pairs(pairs[xx].sample()):
            if en not in english:
                english[en] = out.add(en, ENGLISH)
            out.pairs.setdefault(xx, []).append((english[en], out.add(text, xx, english[en])))
    for code in sorted(mono):
        for text in dict.fromkeys(mono[code].sample()):
            out.add(text, code)
    out.lid_rows = _balanced_rows(out.langs, random.Random(f"{seed}-lid"))
    if len(set(out.langs)) < 2:
        raise UserError(f"--texts {' '.join(paths)}: expected sentences in at least two languages (parallel "
                        f"pairs, or multilingual text), got {', '.join(sorted(set(out.langs))) or 'none'}")
    return out


class _Reservoir:
    """A uniform sample of at most k items of a stream (algorithm R), drawn by a generator seeded with
    (seed, language), so that a language's sample does not depend on the other languages in the files."""

    def __init__(self, k: int, seed: int, lang: str):
        self.k, self.rng, self.seen, self.items = k, random.Random(f"{seed}-{lang}"), 0, []

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append((self.seen, item))
        elif (j := self.rng.randrange(self.seen)) < self.k:
            self.items[j] = (self.seen, item)

    def sample(self) -> list:
        """The sampled items in stream order."""
        return [item for _, item in sorted(self.items, key=lambda x: x[0])]


def _unique_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs whose English side and translation were not seen before in this language: duplicates would be
    tied candidates in retrieval."""
    seen_en, seen_xx, out = set(), set(), []
    for en, text in pairs:
        if en not in seen_en and text not in seen_xx:
            seen_en.add(en)
            seen_xx.add(text)
            out.append((en, text))
    return out


def _sample(items: list, k: int, rng: random.Random) -> list:
    if len(items) <= k:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def _balanced_rows(langs: list[str], rng: random.Random) -> list[int]:
    """All rows, English ones (one per distinct English sentence of every language's pairs) drawn down to
    the largest other language's count, so that English is no majority class by construction."""
    others = [lang for lang in langs if lang != ENGLISH]
    english = [i for i, lang in enumerate(langs) if lang == ENGLISH]
    cap = max((others.count(lang) for lang in set(others)), default=len(english))
    keep = set(_sample(english, cap, rng))
    return [i for i, lang in enumerate(langs) if lang != ENGLISH or i in keep]


def measure(reps: torch.Tensor, sentences: Sentences, held_out: float = 0.3, seed: int = 0) -> dict:
    """The probe's metrics of reps [N, D] (row i embeds sentences.texts[i])."""
    rows = sentences.lid_rows
    found = held_out_language_id(reps[rows], [sentences.langs[i] for i in rows], held_out, seed,
                                 groups=[sentences.groups[i] for i in rows])
    out = {"language_id": None if found is None else _language_id(found), "pairs": None}
    per_lang = {}
    for xx, pairs in sentences.pairs.items():
        en_rows, xx_rows = [p[0] for p in pairs], [p[1] for p in pairs]
        sims = {k.split("/")[-1]: v for k, v in parallel_similarity(reps[en_rows], reps[xx_rows]).items()}
        hits = translation_retrieval(reps[en_rows], reps[xx_rows])
        per_lang[xx] = {"pairs": len(pairs), **sims, "p1_en_to_xx": hits["en_to_xx"],
                        "p1_xx_to_en": hits["xx_to_en"]}
    if per_lang:
        keys = ("pair_cos", "nonpair_cos", "gap", "p1_en_to_xx", "p1_xx_to_en")
        out["pairs"] = {**{k: sum(m[k] for m in per_lang.values()) / len(per_lang) for k in keys},
                        "per_language": per_lang}
    return out


def _language_id(found) -> dict:
    per_lang = {}
    for index, name in enumerate(found.names):
        mine = found.truth == index
        per_lang[name] = {"held_out": int(mine.sum()), "centroid": float((found.centroid[mine] == index).float().mean()),
                          "linear": float((found.linear[mine] == index).float().mean())}
    return {"centroid": found.accuracy(found.centroid), "linear": found.accuracy(found.linear),
            "chance": found.chance(), "held_out": len(found.truth), "per_language": per_lang}


def embed(model_path: str, texts: list[str], tower: str = "passage", prompt: str = "none", max_len: int = 128,
          batch_size: int = 64, dtype: str = "auto") -> tuple[torch.Tensor, dict]:
    """(embeddings [N, D] of `texts` by the model's `tower`, with its own pooling and normalisation, after
    its `prompt` prefix or none; the settings used)."""
    from .evaluation.encode import encode_texts, resolve_dtype
    from .loading import load_model
    from .model import max_tokens

    if not Path(model_path).exists():
        raise UserError(f"MODEL {model_path}: not found; expected an exported, sentence-transformers or "
                        "transformers model folder, or a training run / checkpoint")
    model, tokenizer = load_model(model_path)
    limit = max_tokens(model.tower(tower))
    if limit is not None and max_len > limit:
        raise UserError(f"--max-len: {max_len} tokens, but {model_path}'s position embeddings allow at most {limit}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(dtype, device)
    prefix = "" if prompt == "none" else model.prefixes.get(prompt, "")
    model.prefixes = {**model.prefixes, tower: prefix}
    reps = encode_texts(model.to(device), tokenizer, texts, tower, max_len, batch_size, dtype=dtype, device=device,
                        show_progress=False)
    settings = {"pooling": model.pooling, "normalize": model.normalize, "shared_encoder": model.shared,
                "tower": tower if not model.shared else "shared", "prefix": prefix, "dtype": dtype}
    return torch.from_numpy(reps), settings


def run_probe(args) -> None:
    """The `probe` command: measure every MODEL on --texts; print the table; write --output if given."""
    from . import probe_report

    if not 0 < args.held_out < 1:
        raise UserError(f"--held-out {args.held_out}: expected a fraction between 0 and 1")
    for option, value, least in (("--max-len", args.max_len, 2), ("--batch-size", args.batch_size, 1)):
        if value < least:
            raise UserError(f"{option} {value}: expected at least {least}")
    if args.max_per_lang < 4:
        raise UserError(f"--max-per-lang {args.max_per_lang}: expected at least 4 (a held-out split per language)")
    inputs = [("MODEL", m) for m in args.models] + [("--texts", t) for t in args.texts]
    names = probe_report.column_names(args.models, args.names)
    out_dir = probe_report.check_output(args.output, inputs, args.overwrite) if args.output else None
    sentences = read_sentences(args.texts, args.format, args.lang, args.max_per_lang, args.seed)
    results = []
    for name, path in zip(names, args.models):
        reps, settings = embed(path, sentences.texts, args.tower, args.prompt, args.max_len, args.batch_size,
                               args.dtype)
        results.append({"name": name, "path": str(path), **settings,
                        **measure(reps, sentences, args.held_out, args.seed)})
    report = probe_report.Report(vars(args), sentences, results)
    print(report.markdown())
    if out_dir is not None:
        probe_report.write(out_dir, report, args.overwrite)
        print(f"\nprobe: {out_dir / 'probe.md'}, {out_dir / 'probe.json'}, {out_dir / 'probe.png'}")
