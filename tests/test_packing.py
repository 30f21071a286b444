"""model.padding_free: packing by hand (one row for flash-attention, rows first fit longest first for
SDPA / eager), position ids as each model family numbers them, packed representations and gradients
equal to the padded path's on CPU, the refusal of unknown model types; the flash path on a GPU."""

import pytest
import torch
from equivalence import (
    BF16_FLASH_REPS,
    PACKED_GRADS,
    PACKED_REPS,
    WRONG_POSITIONS_DIFFER,
    assert_close_tensors,
    assert_same_grads,
)
from helpers_tiny import make_tiny_model, make_tiny_tokenizer

import dist_lacl.model
from dist_lacl.config import config_from_dict
from dist_lacl.errors import UserError
from dist_lacl.model import (
    DualEncoder,
    build_model,
    first_position,
    flash_attention_implementation,
    load_encoder,
)
from dist_lacl.packing import attention_kwargs, pack, packed_rows, pool_packed


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """{model type: folder}: the tests' tiny XLM-R and a tiny BERT of the same shape."""
    root = tmp_path_factory.mktemp("packing-models")
    tokenizer = make_tiny_tokenizer(root / "tokenizer")
    paths = {}
    for model_type in ("xlm-roberta", "bert"):
        make_tiny_model(root / model_type, tokenizer, model_type=model_type)
        paths[model_type] = str(root / model_type)
    return paths


def padded_batch(vocab_size: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (real tokens 5.., never the padding id 1) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (len(lengths), max(lengths)), generator=generator)
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    return ids * mask + 1 * (1 - mask), mask


def test_pack_by_hand():
    ids = torch.tensor([[5, 6, 7, 1, 1], [8, 9, 1, 1, 1], [4, 4, 4, 4, 4]])
    mask = (ids != 1).long()
    packed = pack(ids, mask, first_position=2)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 4, 4, 4, 4, 4]]
    assert packed.position_ids.tolist() == [[2, 3, 4, 2, 3, 2, 3, 4, 5, 6]]
    assert packed.sequence.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert packed.cu_seq_lens.tolist() == [0, 3, 5, 10] and packed.cu_seq_lens.dtype == torch.int32
    assert packed.max_length == 5 and packed.num_sequences == 3
    flash = attention_kwargs(packed, "flash_attention_2", torch.float32)
    assert flash["cu_seq_lens_q"] is flash["cu_seq_lens_k"] is packed.cu_seq_lens and flash["max_length_k"] == 5
    block = attention_kwargs(packed, "sdpa", torch.float32)["attention_mask"]
    assert block.shape == (1, 1, 10, 10) and block.dtype == torch.bool
    assert block[0, 0, 3].tolist() == [False] * 3 + [True] * 2 + [False] * 5  # token 3 sees its sequence only
    additive = attention_kwargs(packed, "eager", torch.float32)["attention_mask"][0, 0]
    assert additive[3, 4] == 0 and additive[3, 2] == torch.finfo(torch.float32).min
    hidden = torch.arange(10.0)[None, :, None].repeat(1, 1, 2)  # token t's vector is (t, t)
    assert pool_packed(hidden, packed, "cls")[:, 0].tolist() == [0, 3, 5]
    assert pool_packed(hidden, packed, "mean")[:, 0].tolist() == [1, 3.5, 7]


@pytest.mark.parametrize("model_type", ["xlm-roberta", "bert"])
def test_position_ids_restart_where_the_model_numbers_its_first_token(tiny_models, model_type):
    """XLM-R numbers a row's tokens from padding_idx + 1 (its own rule from the ids), BERT from 0."""
    encoder = load_encoder(tiny_models[model_type])
    ids, mask = padded_batch(encoder.config.vocab_size, [4, 7, 2])
    packed = pack(ids, mask, first_position(encoder.config))
    if model_type == "xlm-roberta":
        expected = encoder.embeddings.create_position_ids_from_input_ids(ids, encoder.config.pad_token_id)
        assert first_position(encoder.config) == 2
    else:
        expected = torch.arange(ids.shape[1]).expand_as(ids)
        assert first_position(encoder.config) == 0
    assert packed.position_ids[0].tolist() == expected[mask.bool()].tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("model_type", ["xlm-roberta", "bert"])
def test_packed_representations_equal_padded(tiny_models, model_type, pooling, attn, monkeypatch):
    """The same weights, eval mode: each sequence's representation packed equals it padded, and so do the
    gradients of a loss over them (the packed layout's backward reaches the same parameters), in rows as
    long as the longest sequence (17: [17] [12 3 1] [9]) and in rows of a fixed 24 ([17 3 1] [12 9])."""
    encoder = load_encoder(tiny_models[model_type], attn_implementation=attn)
    with torch.no_grad():
        encoder.get_input_embeddings().weight.mul_(20.0)  # distinct inputs, distinct representations
    ids, mask = padded_batch(encoder.config.vocab_size, [9, 3, 17, 1, 12], seed=1)
    shapes = []

    def recording_pack(*args, **kwargs):
        packed = pack(*args, **kwargs)
        shapes.append(tuple(packed.input_ids.shape))
        return packed

    monkeypatch.setattr(dist_lacl.model, "pack", recording_pack)
    results = []
    for padding_free, row_length in ((False, 0), (True, 0), (True, 24)):
        model = DualEncoder(encoder, pooling=pooling, padding_free=padding_free, packed_row_length=row_length).eval()
        model.zero_grad(set_to_none=True)
        reps = model(ids, mask)
        (reps * torch.linspace(-1, 1, reps.numel()).view_as(reps)).sum().backward()
        results.append((reps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert shapes == [(3, 17), (2, 24)]
    (padded, grads_padded), *packed_runs = results
    assert padded.std(0).mean() > 1e-2  # the rows differ: a comparison of representations, not of one vector
    for packed, grads_packed in packed_runs:
        torch.testing.assert_close(packed, padded, **PACKED_REPS)
        # Attention key biases: gradient 0 in exact arithmetic (softmax is shift-invariant), rounding noise here.
        assert_same_grads(grads_packed, grads_padded, **PACKED_GRADS)


def test_pack_in_rows_by_hand():
    """Rows of the longest (5), longest first, first fit: [s2 s2 s2 s2 s2] [s0 s0 s0 s3 s3] [s1 filler x 4]."""
    lengths = [3, 1, 5, 2]
    ids = torch.tensor([[10 * (b + 1) + t if t < n else 1 for t in range(5)] for b, n in enumerate(lengths)])
    packed = pack(ids, (ids != 1).long(), first_position=2, row_length=5)
    assert packed.input_ids.tolist() == [[30, 31, 32, 33, 34], [10, 11, 12, 40, 41], [20, 0, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[2, 3, 4, 5, 6], [2, 3, 4, 2, 3], [2, 2, 2, 2, 2]]
    assert packed.segment.tolist() == [[2] * 5, [0, 0, 0, 3, 3], [1, -3, -3, -3, -3]]
    assert packed.index.tolist() == [5, 6, 7, 10, 0, 1, 2, 3, 4, 8, 9]  # sequence by sequence, in input order
    assert packed.cu_seq_lens.tolist() == [0, 3, 4, 9, 11]
    mask = attention_kwargs(packed, "sdpa", torch.float32)["attention_mask"]
    assert mask.shape == (3, 1, 5, 5)
    assert mask[1, 0, 3].tolist() == [False, False, False, True, True]  # s3 sees itself, not s0 in its row
    assert mask[2, 0, 2].tolist() == [False, True, True, True, True]  # filler sees filler: no empty softmax
    hidden = torch.arange(15.0).view(3, 5, 1)  # position (r, c)'s vector is r * 5 + c
    assert pool_packed(hidden, packed, "cls")[:, 0].tolist() == [5, 10, 0, 8]
    assert pool_packed(hidden, packed, "mean")[:, 0].tolist() == [6, 10, 2, 8.5]
    with pytest.raises(ValueError, match="one packed row"):
        attention_kwargs(packed, "flash_attention_2", torch.float32)


def test_rows_fill_first_fit_longest_first():
    rows = packed_rows([2, 7, 4, 3, 1, 5])  # capacity 7: [7] [5 2] [4 3] [1]
    assert rows.capacity == 7 and rows.free == [0, 0, 0, 6] and rows.positions == 28
    assert rows.fits(6) and not rows.fits(7)
    with pytest.raises(ValueError, match="does not fit rows of 7"):
        rows.place(8)


def test_padding_free_without_flash_packs_rows_under_sdpa(tiny_models, training_data):
    """On CPU (or fp32, or without flash-attn) model.padding_free runs rows under SDPA, in any precision."""
    cfg = config_from_dict({"model": {"name_or_path": tiny_models["xlm-roberta"], "padding_free": True},
                            "data": {"train_ir": training_data["train_ir"]},
                            "loss": {"semantic_weight": 0.0, "language_weight": 0.0}})
    assert cfg.train.precision == "fp32" and flash_attention_implementation("fp32") is None
    model = build_model(cfg.model, cfg.train.precision)
    assert model.padding_free and model.query_encoder.config._attn_implementation == "sdpa"


def test_padding_free_refuses_a_model_type_it_does_not_know(tiny_models, tmp_path):
    import json
    import shutil

    shutil.copytree(tiny_models["bert"], tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "distilbert"}))
    with pytest.raises(UserError, match=r"model.padding_free: supported for model types bert, .*'distilbert'"):
        load_encoder(str(tmp_path / "m"), attn_implementation="flash_attention_2")
    with pytest.raises(UserError, match=r"model.padding_free: supported for model types bert, .*'distilbert'"):
        load_encoder(str(tmp_path / "m"), padding_free=True)  # the SDPA rows need the same position ids


def _flash_available() -> bool:
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return torch.cuda.is_available() and (is_flash_attn_2_available() or is_flash_attn_3_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _flash_available(), reason="needs a CUDA GPU and flash-attn")
@pytest.mark.parametrize("model_type", ["xlm-roberta", "bert"])
def test_flash_varlen_packed_equals_padded_sdpa_on_cuda(tiny_models, model_type):
    """The real path: flash-attention's varlen kernel over the packed row, bf16, against SDPA padded."""
    flash = load_encoder(tiny_models[model_type], attn_implementation=flash_attention_implementation("bf16"))
    sdpa = load_encoder(tiny_models[model_type], attn_implementation="sdpa")
    ids, mask = padded_batch(flash.config.vocab_size, [9, 3, 17, 1, 12, 40], seed=2)
    ids, mask = ids.cuda(), mask.cuda()
    for pooling in ("cls", "mean"):
        packed = DualEncoder(flash, pooling=pooling, padding_free=True).cuda().bfloat16().eval()
        padded = DualEncoder(sdpa, pooling=pooling).cuda().bfloat16().eval()
        with torch.no_grad():
            a, b = packed(ids, mask).float(), padded(ids, mask).float()
        assert_close_tensors(a, b, **BF16_FLASH_REPS)


def test_xlmr_positions_numbered_from_zero_give_other_representations(tiny_models, monkeypatch):
    """The control: XLM-R packed with BERT's numbering (from 0, not padding_idx + 1) no longer matches."""
    import dist_lacl.model

    encoder = load_encoder(tiny_models["xlm-roberta"])
    with torch.no_grad():
        encoder.get_input_embeddings().weight.mul_(20.0)
    ids, mask = padded_batch(encoder.config.vocab_size, [9, 3, 17, 12], seed=1)
    with torch.no_grad():
        padded = DualEncoder(encoder, pooling="mean").eval()(ids, mask)
        monkeypatch.setattr(dist_lacl.model, "first_position", lambda config: 0)
        packed = DualEncoder(encoder, pooling="mean", padding_free=True).eval()(ids, mask)
    assert not torch.allclose(packed, padded, **WRONG_POSITIONS_DIFFER)


@pytest.mark.gpu
@pytest.mark.skipif(not _flash_available(), reason="needs a CUDA GPU and flash-attn")
def test_flash_varlen_dropout_replays_exactly_on_cuda(tiny_models):
    """The gradient cache's two passes of a packed chunk: flash-attention draws its dropout masks from the
    CUDA generator, so the recorded state gives the re-forward the first pass's masks."""
    from dist_lacl.grad_cache import RandomState
    encoder = load_encoder(tiny_models["xlm-roberta"], attn_implementation=flash_attention_implementation("bf16"))
    model = DualEncoder(encoder, pooling="mean", padding_free=True).cuda().bfloat16().train()
    ids, mask = padded_batch(encoder.config.vocab_size, [9, 3, 17, 12], seed=3)
    ids, mask = ids.cuda(), mask.cuda()
    torch.cuda.manual_seed(0)
    with torch.no_grad():
        state = RandomState()
        first = model(ids, mask)
    with state.replay():
        again = model(ids, mask)
    assert again.requires_grad and torch.equal(first, again.detach())
    assert not torch.equal(first, model(ids, mask).detach())  # dropout was on
