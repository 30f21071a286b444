"""RNG replay records and restores only the current CUDA device (issue 17.4), on CPU through a fake
`torch.cuda` that logs which devices are touched; the real CUDA path in a GPU-marked test."""

import pytest
import torch

from dist_lacl import checkpoint
from dist_lacl.grad_cache import RandomState, same_attention_kernel


class FakeCuda:
    """torch.cuda's RNG calls on a node that shows `count` GPUs, this rank on `current`."""

    def __init__(self, monkeypatch, current: int, count: int):
        self.current, self.count, self.states, self.calls = current, count, {}, []
        for name in ("is_initialized", "is_available"):
            monkeypatch.setattr(torch.cuda, name, lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        for name in ("get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, self.all_devices)

    def index(self, device):
        device = self.current if device == "cuda" else device
        assert 0 <= device < self.count, f"device {device} on a node showing {self.count} GPU(s)"
        return device

    def get(self, device="cuda"):
        self.calls.append(("get", self.index(device)))
        return self.states.get(self.index(device), torch.zeros(1, dtype=torch.uint8)).clone()

    def set(self, state, device="cuda"):
        self.calls.append(("set", self.index(device)))
        self.states[self.index(device)] = state.clone()

    def all_devices(self, *args):
        raise AssertionError("touches every visible device")


def test_replay_touches_only_the_current_device_and_restores_it(monkeypatch):
    cuda = FakeCuda(monkeypatch, current=1, count=4)
    cuda.states[1] = torch.tensor([7], dtype=torch.uint8)
    recorded = RandomState()
    cuda.states[1] = torch.tensor([9], dtype=torch.uint8)  # the stream moved on (later chunks)
    with recorded.replay():
        assert cuda.states[1].item() == 7
        cuda.states[1] = torch.tensor([8], dtype=torch.uint8)  # the re-forward draws masks
    assert cuda.states[1].item() == 9  # the surrounding stream is untouched
    assert {device for _, device in cuda.calls} == {1}


def test_replay_also_restores_the_cpu_stream():
    recorded = RandomState()
    first = torch.rand(3)
    after = torch.get_rng_state()
    with recorded.replay():
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.get_rng_state(), after)


def test_checkpoint_rng_state_resumes_on_a_node_showing_fewer_gpus(monkeypatch):
    """Saved by rank 3 of a node showing 4 GPUs; resumed by a task shown one GPU (SLURM's per-task binding)."""
    saving = FakeCuda(monkeypatch, current=3, count=4)
    saving.states[3] = torch.tensor([5], dtype=torch.uint8)
    state = checkpoint.rng_state()
    resuming = FakeCuda(monkeypatch, current=0, count=1)
    checkpoint.set_rng_state(state)
    assert resuming.states[0].item() == 5
    assert saving.calls == [("get", 3)] and resuming.calls == [("set", 0)]


def test_no_attention_kernel_restriction_on_cpu():
    """On CPU both passes run the same kernels anyway; the restriction is a CUDA matter."""
    assert not torch.cuda.is_available()
    with same_attention_kernel():
        pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dropout_replays_exactly_on_cuda_through_sdpa(tiny_model_dir):
    """The no-grad pass and the autograd re-forward under the recorded state give identical
    representations with attention dropout on, through transformers' SDPA attention on the GPU."""
    from dist_lacl.model import DualEncoder, load_encoder

    model = DualEncoder(load_encoder(str(tiny_model_dir))).cuda().train()
    ids = torch.randint(5, 300, (8, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[4:, 30:] = 0
    torch.cuda.manual_seed(0)
    with torch.no_grad(), same_attention_kernel():
        state = RandomState()
        first = model(ids, mask)
    assert state.cuda is not None
    with state.replay(), same_attention_kernel():
        again = model(ids, mask)
    assert again.requires_grad and torch.equal(first, again.detach())
    with same_attention_kernel():
        assert not torch.equal(first, model(ids, mask).detach())  # dropout was on


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_equals_uncached_with_dropout_on_cuda(tiny_model_dir, training_data, tmp_path):
    """tests/test_grad_cache.py's equivalence on the GPU: same loss, same gradients, dropout on."""
    from equivalence import CUDA_GRADS, REORDERED_LOSS, assert_same_grads
    from helpers_grad_cache import grads, make_step

    from dist_lacl.grad_cache import GradCache
    from dist_lacl.objective import Objective

    cfg, model, jobs = make_step(tiny_model_dir, training_data, tmp_path)
    model.cuda()
    jobs = {job: {k: v.cuda() for k, v in x.items()} for job, x in jobs.items()}
    gc = GradCache(encode=lambda job, x: model(**x, tower=job.tower), loss_fn=Objective(cfg.loss),
                   backward_fn=lambda loss: loss.backward(), chunk_size=2)
    torch.manual_seed(123)
    cache = gc.compute_loss(jobs)
    gc.backward(cache)
    cached = grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    reps = {}
    with same_attention_kernel():
        for job, x in jobs.items():
            parts, order = gc.split(x)
            reps[job] = torch.cat([model(**c, tower=job.tower) for c in parts])[order.argsort().cuda()]
    loss, _ = Objective(cfg.loss)(reps)
    loss.backward()
    assert cache.loss.item() == pytest.approx(loss.item(), rel=REORDERED_LOSS)
    assert_same_grads(cached, grads(model), **CUDA_GRADS)
