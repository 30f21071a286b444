"""Dual encoder over any transformers encoder: towers, pooling, normalisation. Knows nothing of ranks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

from .errors import ConfigError, UserError
from .packing import FLASH_IMPLEMENTATIONS, attention_kwargs, pack, pool_packed

TOWERS = ("query", "passage")
log = logging.getLogger(__name__)


class DualEncoder(nn.Module):
    """Encodes token batches into sentence representations with the query or passage tower.

    With `shared_encoder` both names refer to one module (and one set of parameters). `prefixes`: the
    text each tower's inputs start with (e5's "query: " / "passage: "), for whoever tokenizes them.
    `padding_free`: each batch's sequences go through the encoder packed without padding (dist_lacl.packing):
    one row through flash-attention's varlen kernel where the encoder runs flash-attention, else rows as
    long as the batch's longest sequence, shorter ones sharing a row, under a block-diagonal mask.
    `max_lengths`: the tokens per input each tower was trained with ({tower: int or None}, None: unknown),
    the default length of whoever encodes with it; `max_lengths_from` says where they were read.
    """

    def __init__(self, query_encoder: nn.Module, passage_encoder: nn.Module | None = None,
                 pooling: str = "cls", normalize: bool = False, prefixes: dict[str, str] | None = None,
                 padding_free: bool = False, packed_row_length: int = 0,
                 max_lengths: dict[str, int | None] | None = None, max_lengths_from: str = ""):
        super().__init__()
        self.query_encoder = query_encoder
        # Registered only when separate, so a shared encoder is saved and optimised once.
        self.passage_encoder = passage_encoder
        self.pooling = pooling
        self.normalize = normalize
        self.prefixes = {"query": "", "passage": "", **(prefixes or {})}
        self.padding_free = padding_free
        self.packed_row_length = packed_row_length  # 0: rows as long as each chunk's longest sequence
        self.max_lengths = {"query": None, "passage": None, **(max_lengths or {})}
        self.max_lengths_from = max_lengths_from

    @property
    def shared(self) -> bool:
        return self.passage_encoder is None

    def tower(self, name: str) -> nn.Module:
        if name not in TOWERS:
            raise ValueError(f"unknown tower {name!r}")
        return self.query_encoder if name == "query" or self.shared else self.passage_encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tower: str = "query") -> Tensor:
        """input_ids, attention_mask [B, L] -> representations [B, D] in the encoder's dtype."""
        encoder = self.tower(tower)
        if self.padding_free:
            reps = forward_packed(encoder, input_ids, attention_mask, self.pooling, self.packed_row_length)
        else:
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            reps = pool(hidden, attention_mask, self.pooling)
        return F.normalize(reps, dim=-1) if self.normalize else reps


def forward_packed(encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor, pooling: str,
                   row_length: int = 0) -> Tensor:
    """[B, L] right-padded -> [B, D]: the encoder run over the B sequences packed (one row for flash-attention,
    else rows of `row_length` positions, 0: the longest sequence's length)."""
    implementation = encoder.config._attn_implementation
    rows = None if implementation in FLASH_IMPLEMENTATIONS else row_length or int(attention_mask.sum(1).max())
    packed = pack(input_ids, attention_mask, first_position(encoder.config), rows)
    kwargs = attention_kwargs(packed, implementation, encoder.get_input_embeddings().weight.dtype)
    hidden = encoder(input_ids=packed.input_ids, position_ids=packed.position_ids,
                     token_type_ids=torch.zeros_like(packed.input_ids), **kwargs).last_hidden_state
    return pool_packed(hidden, packed, pooling)


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """[B, L, D] -> [B, D]: the first token ([CLS] / <s>) or the mean over non-padding tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def build_model(cfg, precision: str = "fp32") -> DualEncoder:
    """The dual encoder of `cfg` (config.ModelConfig), loaded from a local folder or hub id. With
    padding_free, flash-attention where it can run (a CUDA GPU, flash-attn, `precision` bf16/fp16)."""
    attn = flash_attention_implementation(precision) if cfg.padding_free else None
    if cfg.padding_free:
        log.info("model.padding_free: %s", f"one packed row per chunk through {attn}'s varlen kernel" if attn else
                 f"rows of {cfg.packed_row_length or 'the longest sequence'} positions shared by several sequences "
                 f"under SDPA's block-diagonal mask (no flash-attention for {precision} here)")
    query = load_encoder(cfg.name_or_path, cfg.random_init, attn, cfg.padding_free)
    passage = None if cfg.shared_encoder else load_encoder(cfg.name_or_path, cfg.random_init, attn, cfg.padding_free)
    if cfg.gradient_checkpointing:
        for enc in (query, passage):
            if enc is not None:
                enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        for enc in (query, passage):
            if enc is not None:
                compile_encoder(enc, cfg.compile_backend)
    return DualEncoder(query, passage, pooling=cfg.pooling, normalize=cfg.normalize, prefixes=prefixes_of(cfg),
                       padding_free=cfg.padding_free, packed_row_length=cfg.packed_row_length)


def flash_attention_implementation(precision: str) -> str | None:
    """The flash-attention implementation transformers can run here for `precision`, or None (padding-free
    batches then go in rows under SDPA's block-diagonal mask: flash-attention has no fp32 kernel)."""
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if precision == "fp32" or not torch.cuda.is_available():
        return None
    for name, available in (("flash_attention_3", is_flash_attn_3_available),
                            ("flash_attention_2", is_flash_attn_2_available)):
        if available():
            return name
    return None


# Absolute position embeddings numbered from first_position(); attention kwargs passed down to the
# attention function (transformers 5's BERT and RoBERTa families).
_PADDING_FREE_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}


def compile_encoder(encoder: nn.Module, backend: str = "inductor") -> None:
    """Compile `encoder`'s forward in place (its parameters and state-dict keys are unchanged).

    dynamic=True makes every size a symbol from the first call: chunks of any length and row count share
    one graph, so lengths need no bucketing. Dynamo keeps one graph per grad mode and train/eval mode,
    and another for a chunk of one row (sizes 0 and 1 are specialised): at most 6, within its
    recompile limit of 8 (tested). fallback_random: inductor draws dropout masks with torch's own random
    ops, from the same generator in the same order as eager, so the gradient cache's RNG replay gives
    the re-forward the first pass's masks (and a compiled step equals an eager one).
    """
    if backend == "inductor" and not torch.cuda.is_available():
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            raise UserError("model.compile: inductor on CPU needs a C++ compiler (g++ or clang++, or $CXX) and "
                            "none was found; install one or set model.compile_backend: aot_eager") from None
    encoder.compile(dynamic=True, backend=backend,
                    options={"fallback_random": True} if backend == "inductor" else None)


def prefixes_of(cfg) -> dict[str, str]:
    """{tower: prefix} of a config.ModelConfig."""
    return {"query": cfg.query_prefix, "passage": cfg.passage_prefix}


# BERT-like models carry a pooler the dual encoder never uses; left in, its parameters get no gradient.
HAS_UNUSED_POOLER = {"bert", "roberta", "xlm-roberta"}


def load_encoder(name_or_path: str, random_init: bool = False, attn_implementation: str | None = None,
                 padding_free: bool = False) -> nn.Module:
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.name_or_path: {name_or_path}: not a loadable model folder or id ({first})") from None
    unused_pooler = config.model_type in HAS_UNUSED_POOLER
    # A folder holding pooler weights (a base model, an export) is loaded with its pooler, dropped afterwards,
    # so that transformers reports no unexpected weights; one without them is built without (nothing missing).
    pooler_on_disk = unused_pooler and not random_init and has_pooler_weights(name_or_path)
    kwargs = {"add_pooling_layer": False} if unused_pooler and not pooler_on_disk else {}
    if (padding_free or attn_implementation in FLASH_IMPLEMENTATIONS) and config.model_type not in _PADDING_FREE_TYPES:
        raise UserError(f"model.padding_free: supported for model types {', '.join(sorted(_PADDING_FREE_TYPES))}; "
                        f"{name_or_path} is {config.model_type!r}. Set model.padding_free: false")
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if random_init:
        return AutoModel.from_config(config, **kwargs)
    encoder = AutoModel.from_pretrained(name_or_path, config=config, **kwargs)
    if pooler_on_disk:
        encoder.pooler = None  # its forward then returns no pooler_output; the state dict loses pooler.*
    return encoder


def has_pooler_weights(name_or_path: str) -> bool:
    """Whether the local weights in `name_or_path` hold `pooler.*` tensors (a hub id: False, as before)."""
    folder = Path(name_or_path)
    index = next((folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (folder / n).is_file()), None)
    if index is not None:
        names = json.loads(index.read_text()).get("weight_map", {})
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(folder / "model.safetensors", "pt") as f:
            names = list(f.keys())
    else:
        return False
    return any(n.startswith("pooler.") or ".pooler." in n for n in names)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (as BERT and DPR train)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# RoBERTa-family models number positions from padding_idx + 1, so two of their rows are never a token's.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}


def max_tokens(encoder: nn.Module) -> int | None:
    """The longest input (special tokens included) the encoder's position embeddings can number."""
    config = encoder.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - first_position(config)


def first_position(config) -> int:
    """The position id of a sequence's first token: padding_idx + 1 for the RoBERTa family, else 0."""
    return (config.pad_token_id or 0) + 1 if config.model_type in _POSITION_OFFSET_TYPES else 0


def check_lengths(model: DualEncoder, tokenizer, cfg) -> None:
    """Every length configured in `cfg` (a config.RunConfig) must fit the model's position embeddings and
    leave room for text after its prefix (the prefix counts inside max_len: truncation cuts the text)."""
    limit = max_tokens(model.tower("query"))
    d, m = cfg.data, cfg.model
    for name, length, prefix, prefix_name in (
            ("query_max_len", d.query_max_len, m.query_prefix, "query_prefix"),
            ("passage_max_len", d.passage_max_len, m.passage_prefix, "passage_prefix"),
            ("sentence_max_len", d.sentence_max_len, m.query_prefix, "query_prefix")):
        if limit is not None and length > limit:
            raise ConfigError(f"data.{name}: {length} tokens, but {m.name_or_path} numbers at most {limit} "
                              f"positions; use at most {limit}")
        # Special tokens plus the prefix; at least one token of text must remain.
        needed = len(tokenizer(prefix)["input_ids"]) + 1 if prefix else 0
        if needed and length < needed:
            raise ConfigError(f"data.{name}: {length} tokens leave no room for text after model.{prefix_name} "
                              f"({needed - 1} tokens with the special ones); use at least {needed}")
