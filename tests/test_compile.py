"""model.compile: the compiled encoder's gradient-cache step equals the eager uncached step with dropout on
(RNG replay through compiled graphs), with one graph for every chunk length; under DeepSpeed ZeRO-2 and
DDP across two ranks; the option's checks."""

import pytest
import torch
import torch._dynamo
import yaml
from equivalence import (
    CROSS_PROCESS,
    FP32_GRADS,
    FP32_LOSS,
    GRAD_NORM,
    INDUCTOR_GRADS,
    REORDERED_LOSS,
    ZERO_GRAD_NOISE,
    ZERO_GRAD_UPDATE,
    assert_same_grads,
)
from helpers_grad_cache import cached_step, grad_cache_for, make_step, uncached_step
from helpers_launch import accelerate_launch, torchrun
from helpers_reference_step import reference_step, run_worker, write_config
from torch._dynamo.utils import counters

from dist_lacl.config import config_from_dict
from dist_lacl.errors import ConfigError, UserError
from dist_lacl.model import load_encoder


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters emptied; exceeding its recompile limit fails instead of falling
    back to eager in silence. Through dynamo's own config.patch: monkeypatch's undo deletes the entry
    from dynamo's config module, and the next test's setup then finds no such option."""
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


# Inductor's C++ code generation takes about a minute of CPU for this tiny model, hence slow.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_cached_step_equals_eager_uncached_with_dropout(tiny_model_dir, training_data, tmp_path,
                                                                 fresh_dynamo, backend):
    """Compiled, the no-grad pass and the re-forward of each chunk run two different graphs (inference,
    and forward + backward), yet replaying the recorded RNG state gives them the same dropout masks:
    the cached step equals the eager model's uncached step on the same chunks, to fp32 rounding."""
    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path / "compiled",
                                 compile=True, compile_backend=backend)
    _, eager, _ = make_step(tiny_model_dir, training_data, tmp_path / "eager")
    loss_c, terms_c, grads_c = cached_step(cfg, model, jobs)
    assert graphs() >= 2  # really compiled: an inference graph and a training graph at least
    loss_u, terms_u, grads_u = uncached_step(cfg, eager, jobs)
    assert loss_c == pytest.approx(loss_u, rel=REORDERED_LOSS)
    assert terms_c.scalars() == pytest.approx(terms_u.scalars(), rel=REORDERED_LOSS)
    # Inductor fuses the encoder's elementwise ops: INDUCTOR_GRADS says why its tolerance differs.
    assert_same_grads(grads_c, grads_u, **(FP32_GRADS if backend == "aot_eager" else INDUCTOR_GRADS))
    # Dropout was on: another seed gives another loss.
    torch.manual_seed(7)
    assert grad_cache_for(cfg, model, 2).compute_loss(jobs).loss.item() != pytest.approx(loss_c, rel=FP32_LOSS)
    # One graph for chunks of every length: one per grad mode, and another for chunks of one row
    # (dynamo specialises sizes 0 and 1); not one per chunk shape.
    shapes = {c["input_ids"].shape for x in jobs.values() for c in grad_cache_for(cfg, model, 2).split(x)[0]}
    assert len(shapes) > 10 and min(rows for rows, _ in shapes) == 1
    assert graphs() == 4


def test_compile_backend_is_validated(training_data):
    base = {"data": {"train_ir": training_data["train_ir"]}, "loss": {"semantic_weight": 0.0, "language_weight": 0.0}}
    assert config_from_dict({**base, "model": {"compile": True}}).model.compile_backend == "inductor"
    with pytest.raises(ConfigError, match=r"model.compile_backend: expected one of inductor, aot_eager, got 'tvm'"):
        config_from_dict({**base, "model": {"compile": True, "compile_backend": "tvm"}})


def test_inductor_without_a_cpp_compiler_is_a_user_error(tiny_model_dir, monkeypatch):
    import torch._inductor.config as inductor_config

    from dist_lacl.model import compile_encoder

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    with pytest.raises(UserError, match=r"model.compile: inductor on CPU needs a C\+\+ compiler .* aot_eager"):
        compile_encoder(load_encoder(str(tiny_model_dir)), "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["deepspeed", "ddp"])
def test_compiled_engine_step_equals_plain_pytorch(tmp_path, tiny_model_no_dropout, training_data, backend):
    """Two ranks, gradient cache (several chunks), encoder compiled (aot_eager: the same graphs and
    autograd as inductor, without its code generation): the engine's gradients reach ZeRO-2's partitions
    and DDP's reduction as the eager reference's do, and one optimizer step gives the same weights."""
    config, cfg = write_config(tmp_path, tiny_model_no_dropout, training_data, backend=backend)
    raw = yaml.safe_load(config.read_text())
    raw["model"].update(compile=True, compile_backend="aot_eager")
    config.write_text(yaml.safe_dump(raw))
    loss, grads, params, grad_norm = reference_step(cfg)  # eager: cfg is the file before compile was added
    result = run_worker(tmp_path, config, "engine", launcher=torchrun if backend == "deepspeed" else accelerate_launch)
    assert result["compiled_graphs"] >= 2
    assert result["loss"] == pytest.approx(loss, rel=REORDERED_LOSS)
    assert result["grad_norm"] == pytest.approx(grad_norm, rel=GRAD_NORM)
    assert_same_grads(result["grads"], grads, floor=ZERO_GRAD_NOISE, **CROSS_PROCESS)
    assert_same_grads(result["params"], params, floor=ZERO_GRAD_UPDATE, **CROSS_PROCESS)
