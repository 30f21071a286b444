"""The probe's outputs: a markdown table with the models side by side, probe.json and a PNG bar chart,
written as one folder (checked first, published atomically, never over the user's files)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic import discard, new_temp_dir, publish_dir, write_bytes, write_text
from .errors import UserError
from .outputs import check_output_dir

MARKER = "probe.json"
"""The results, and the folder's marker: what `probe` wrote there (`--overwrite` replaces exactly that)."""
FILES = ("probe.md", "probe.png")

SUMMARY = (("language_id", "centroid", "language ID, nearest centroid (held-out acc.)", "LID\ncentroid"),
           ("language_id", "linear", "language ID, linear probe (held-out acc.)", "LID\nlinear"),
           ("language_id", "chance", "language ID, chance (majority language)", ""),
           ("pairs", "pair_cos", "cosine, translation pairs", "cos\npairs"),
           ("pairs", "nonpair_cos", "cosine, non-pairs", ""),
           ("pairs", "gap", "cosine gap (pairs - non-pairs)", "cos\ngap"),
           ("pairs", "p1_en_to_xx", "P@1 English -> translation", "P@1\nen->xx"),
           ("pairs", "p1_xx_to_en", "P@1 translation -> English", "P@1\nxx->en"))
"""(section, key, row label, bar label or "" for none) of the summary; pair metrics are means over languages."""


def check_output(path: str, inputs, overwrite: bool) -> Path:
    """--output, checked before any model is loaded."""
    return check_output_dir(path, "--output", MARKER, inputs, overwrite)


def column_names(paths: Sequence[str], given: Sequence[str] | None = None) -> list[str]:
    """The `given` names, else each model's folder name, its whole path where two names would be the same."""
    if given:
        if len(given) != len(paths) or len(set(given)) != len(given):
            raise UserError(f"--names {' '.join(given)}: expected {len(paths)} different names, one per MODEL")
        return list(given)
    names = [Path(p).name or str(p) for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


@dataclass
class Report:
    """The command's settings, the probed sentences and each model's results."""

    args: dict
    sentences: object
    models: list[dict]

    def to_json(self) -> dict:
        s = self.sentences
        settings = {k: self.args[k] for k in ("texts", "format", "lang", "max_per_lang", "seed", "held_out",
                                              "tower", "prompt", "max_len")}
        return {"settings": settings,
                "sentences": {lang: s.langs.count(lang) for lang in sorted(set(s.langs))},
                "pairs": {xx: len(p) for xx, p in s.pairs.items()}, "models": self.models}

    def markdown(self) -> str:
        names = [m["name"] for m in self.models]
        lines = [_row(["metric", *names]), _row(["---"] + ["---:"] * len(names))]
        for section, key, label, _ in SUMMARY:
            values = [(m[section] or {}).get(key) for m in self.models]
            if any(v is not None for v in values):
                lines.append(_row([label, *map(_cell, values)]))
        lines += ["", self._per_language(names)]
        s = self.sentences
        lines += ["", f"{len(s.texts)} sentences in {len(set(s.langs))} languages ({len(s.lid_rows)} for language "
                  f"ID, {self.args['held_out']:g} of their translation groups held out, seed {self.args['seed']}); "
                  f"{sum(len(p) for p in s.pairs.values())} translation pairs; tower "
                  f"{self.args['tower']}, prompt {self.args['prompt']}."]
        return "\n".join(lines)

    def _per_language(self, names: list[str]) -> str:
        """Per language: P@1 both ways and the linear probe's held-out recall of that language."""
        langs = sorted({lang for m in self.models for lang in _per_lang(m, "language_id")}
                       | {lang for m in self.models for lang in _per_lang(m, "pairs")})
        head = ["lang"] + [f"{n}: {what}" for n in names for what in ("P@1 en->xx", "P@1 xx->en", "LID recall")]
        lines = [_row(head), _row(["---"] + ["---:"] * (len(head) - 1))]
        for lang in langs:
            cells = [lang]
            for m in self.models:
                pair, lid = _per_lang(m, "pairs").get(lang, {}), _per_lang(m, "language_id").get(lang, {})
                cells += [_cell(pair.get("p1_en_to_xx")), _cell(pair.get("p1_xx_to_en")), _cell(lid.get("linear"))]
            lines.append(_row(cells))
        return "\n".join(lines)


def _per_lang(model: dict, section: str) -> dict:
    return (model.get(section) or {}).get("per_language", {})


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot_png(report: Report) -> bytes:
    """Bar charts: the summary per model, and per language each model's P@1 (mean of both ways) and
    language-ID recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report.models
    width = 0.8 / len(models)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    summary = [(s, k, short) for s, k, _, short in SUMMARY if short]
    for j, m in enumerate(models):
        values = [(m[s] or {}).get(k) or 0.0 for s, k, _ in summary]
        axes[0].bar([i + j * width for i in range(len(summary))], values, width, label=m["name"])
    axes[0].set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(summary))],
                       [short for _, _, short in summary], fontsize=8)
    axes[0].set_title("summary")
    for ax, section, title, value in (
            (axes[1], "pairs", "P@1, translation retrieval (mean of both ways)",
             lambda d: (d["p1_en_to_xx"] + d["p1_xx_to_en"]) / 2),
            (axes[2], "language_id", "language ID recall (linear probe, held-out)", lambda d: d["linear"])):
        langs = sorted({lang for m in models for lang in _per_lang(m, section)})
        for j, m in enumerate(models):
            per = _per_lang(m, section)
            ax.bar([i + j * width for i in range(len(langs))], [value(per[g]) if g in per else 0.0 for g in langs],
                   width, label=m["name"])
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(langs))], langs, fontsize=8)
        ax.set_title(title, fontsize=9)
    for ax in axes[1:]:
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write(out: Path, report: Report, overwrite: bool) -> None:
    """probe.md, probe.png and probe.json into `out`, built aside and renamed into place."""
    check_output_dir(out, "--output", MARKER, overwrite=overwrite)  # again: the probe took a while
    tmp = new_temp_dir(out)
    try:
        write_text(tmp / "probe.md", report.markdown() + "\n")
        write_bytes(tmp / "probe.png", plot_png(report))
        write_text(tmp / MARKER, json.dumps({**report.to_json(), "written": list(FILES)}, indent=1) + "\n")
        publish_dir(tmp, out)
    except BaseException:
        discard(tmp)
        raise
