"""`dist-lacl probe`: planted answers (language-agnostic embeddings vs language-only embeddings, through the
whole command with the encoder stubbed), one real run on the tiny model, and its misuse lines."""

import json
from types import SimpleNamespace

import pytest
import torch
from helpers_cli import assert_clean_failure

from dist_lacl import cli, probe

LANGS = ("de", "fr")
MEANINGS = 30


def run(argv, capsys):
    code = cli.main(["probe", *map(str, argv)])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


@pytest.fixture
def parallel_file(tmp_path):
    """MEANINGS English sentences, each translated into every one of LANGS (the texts name their meaning)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"en": f"en {i}", "text": f"{xx} {i}", "lang": xx}) + "\n"
                            for xx in LANGS for i in range(MEANINGS)))
    return path


def planted(texts, kind):
    """Embeddings [N, 16] of texts `<lang> <meaning>`: `agnostic` = the meaning's vector only (translations
    identical); `language` = the language's vector plus small noise of each text's own (no meaning)."""
    meaning = torch.randn(MEANINGS, 16, generator=torch.Generator().manual_seed(1))
    language = {lang: torch.randn(16, generator=torch.Generator().manual_seed(10 + k))
                for k, lang in enumerate(("en", *LANGS))}
    noise = torch.randn(len(texts), 16, generator=torch.Generator().manual_seed(2))
    if kind == "agnostic":
        return torch.stack([meaning[int(t.split()[1])] for t in texts])
    return torch.stack([language[t.split()[0]] for t in texts]) + 0.05 * noise


@pytest.fixture
def stub_encoder(monkeypatch):
    """`embed` by the model's name: `agnostic` or `language` (see `planted`); no model is loaded."""
    def embed(model_path, texts, *args, **kwargs):
        return planted(texts, str(model_path).rsplit("/", 1)[-1]), {"pooling": "stub", "normalize": False}
    monkeypatch.setattr(probe, "embed", embed)


def test_planted_answers_side_by_side(stub_encoder, parallel_file, tmp_path, capsys):
    out = tmp_path / "out"
    proc = run(["agnostic", "language", "--texts", parallel_file, "--output", out], capsys)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "probe.json").read_text())
    agnostic, language = report["models"]
    assert (agnostic["name"], language["name"]) == ("agnostic", "language")
    chance = agnostic["language_id"]["chance"]
    assert chance == pytest.approx(1 / 3)  # en, de, fr balanced; a translation group is never split
    # Translations identical: no rule finds the language, every translation is found.
    assert agnostic["language_id"]["centroid"] == pytest.approx(chance)
    assert agnostic["language_id"]["linear"] == pytest.approx(chance)
    assert agnostic["pairs"]["p1_en_to_xx"] == agnostic["pairs"]["p1_xx_to_en"] == 1.0
    assert agnostic["pairs"]["pair_cos"] == pytest.approx(1.0)
    # Language only: both rules find it, translation retrieval is at chance level.
    assert language["language_id"]["centroid"] == language["language_id"]["linear"] == 1.0
    assert language["pairs"]["p1_en_to_xx"] < 0.2 and language["pairs"]["p1_xx_to_en"] < 0.2
    assert set(language["pairs"]["per_language"]) == set(LANGS)
    assert report["pairs"] == {xx: MEANINGS for xx in LANGS}
    # One table, both models side by side; the PNG is one.
    table = (out / "probe.md").read_text()
    assert "| metric | agnostic | language |" in table and "| de |" in table
    assert "| language ID, linear probe (held-out acc.) | 0.333 | 1.000 |" in table
    assert table.strip() in proc.stdout
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["probe.json", "probe.md", "probe.png"]


def test_same_seed_same_answer_and_overwrite(stub_encoder, parallel_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["language", "--texts", parallel_file, "--output", out, "--seed", 3], capsys).returncode == 0
    first = json.loads((out / "probe.json").read_text())
    assert_clean_failure(run(["language", "--texts", parallel_file, "--output", out], capsys),
                         "holds a previous output; pass --overwrite")
    assert run(["language", "--texts", parallel_file, "--output", out, "--seed", 3, "--overwrite"],
               capsys).returncode == 0
    assert json.loads((out / "probe.json").read_text()) == first


def test_monolingual_text_gives_language_id_only(stub_encoder, tmp_path, capsys):
    path = tmp_path / "mono.jsonl"
    path.write_text("".join(json.dumps({"text": f"{lang} {i}", "lang": lang}) + "\n"
                            for lang in ("en", *LANGS) for i in range(MEANINGS)))
    proc = run(["language", "--texts", path], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "| language ID, linear probe (held-out acc.) | 1.000 |" in proc.stdout
    assert "P@1 English" not in proc.stdout.split("\n\n")[0]


def test_a_real_model_folder(tiny_model_dir, tmp_path, capsys):
    """The tiny encoder through loading.py and encode.py: every metric present and in range."""
    from helpers_tiny import TEXTS

    path = tmp_path / "pairs.jsonl"
    english, others = TEXTS[:5], {"de": TEXTS[6:11], "fr": TEXTS[11:16], "ru": TEXTS[16:21]}
    path.write_text("".join(json.dumps({"en": en, "text": xx_text, "lang": xx}, ensure_ascii=False) + "\n"
                            for xx, texts in others.items() for en, xx_text in zip(english, texts)))
    out = tmp_path / "out"
    proc = run([tiny_model_dir, "--texts", path, "--output", out, "--names", "tiny"], capsys)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((out / "probe.json").read_text())["models"]
    assert result["name"] == "tiny" and result["pooling"] == "cls"
    for value in (*(result["language_id"][k] for k in ("centroid", "linear", "chance")),
                  result["pairs"]["p1_en_to_xx"], result["pairs"]["p1_xx_to_en"]):
        assert 0.0 <= value <= 1.0
    assert_clean_failure(run([tiny_model_dir, "--texts", path, "--max-len", 999], capsys),
                         "--max-len: 999 tokens, but")


def test_misuse(stub_encoder, parallel_file, tmp_path, capsys):
    assert_clean_failure(run(["agnostic", "--texts", tmp_path / "missing.jsonl"], capsys), "missing.jsonl: file not found")
    one_lang = tmp_path / "one.jsonl"
    one_lang.write_text("".join(json.dumps({"text": f"de {i}", "lang": "de"}) + "\n" for i in range(9)))
    assert_clean_failure(run(["agnostic", "--texts", one_lang], capsys), "at least two languages")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "x", "text": "y", "lang": "de"}\n{"en": "x", "lang": "de"}\n')
    assert_clean_failure(run(["agnostic", "--texts", bad], capsys), "line 2: field 'text'")
    assert_clean_failure(run(["a", "b", "--texts", parallel_file, "--names", "x"], capsys),
                         "expected 2 different names")
    assert_clean_failure(run(["a", "--texts", parallel_file, "--held-out", 1.5], capsys), "--held-out 1.5")
    assert_clean_failure(run(["a", "--texts", parallel_file, "--batch-size", 0], capsys), "--batch-size 0")
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    assert_clean_failure(run(["a", "--texts", parallel_file, "--output", users, "--overwrite"], capsys),
                         "not a previous output")
    assert_clean_failure(run(["a", "--texts", parallel_file, "--output", tmp_path], capsys), "--texts")
    assert (users / "notes.txt").read_text() == "mine" and sorted(p.name for p in users.iterdir()) == ["notes.txt"]


def test_a_model_that_is_not_there(parallel_file, tmp_path, capsys):
    assert_clean_failure(run([tmp_path / "nope", "--texts", parallel_file], capsys), "MODEL")


def test_sentences_sampled_per_language_without_duplicates(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"en": f"en {i}", "text": f"{xx} {i}", "lang": xx} for xx in LANGS for i in range(200)]
    rows += [{"en": "en 0", "text": "de again", "lang": "de"}, {"en": "en again", "text": "de 1", "lang": "de"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    everything = probe.read_sentences([path], max_per_lang=1000)
    assert {xx: len(p) for xx, p in everything.pairs.items()} == {"de": 200, "fr": 200}  # repeats left out
    assert everything.langs.count("en") == 200 and len(everything.lid_rows) == 600
    sample = probe.read_sentences([path], max_per_lang=20, seed=1)
    assert {xx: len(p) for xx, p in sample.pairs.items()} == {"de": 20, "fr": 20}
    assert sample == probe.read_sentences([path], max_per_lang=20, seed=1)
    assert sample.texts != probe.read_sentences([path], max_per_lang=20, seed=2).texts
    # English: one row per distinct English sentence, drawn down to the largest other language's count.
    assert [sample.langs[i] for i in sample.lid_rows].count("en") == 20
