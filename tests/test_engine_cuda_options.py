"""Fused AdamW on CUDA only (DeepSpeed's torch AdamW and DDP's), never with an offloaded optimizer; the
real fused path in a GPU-marked test."""

import pytest
import torch
from equivalence import FUSED_ADAMW

from dist_lacl.config import config_from_dict
from dist_lacl.ds_config import deepspeed_config


def run_config(training_data, ds_file="zero2_bf16.json"):
    return config_from_dict({"data": {"train_ir": training_data["train_ir"]},
                             "loss": {"semantic_weight": 0.0, "language_weight": 0.0},
                             "train": {"precision": "bf16", "deepspeed_config": f"ds_configs/{ds_file}"}})


def test_fused_adamw_only_where_cuda_runs_it(training_data, monkeypatch):
    cfg = run_config(training_data)
    assert "fused" not in deepspeed_config(cfg, 1)["optimizer"]["params"]  # CPU: torch's foreach AdamW
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert deepspeed_config(cfg, 1)["optimizer"]["params"]["fused"] is True
    offload = deepspeed_config(run_config(training_data, "zero2_bf16_offload.json"), 1)["optimizer"]["params"]
    assert "fused" not in offload and offload["torch_adam"] is False  # DeepSpeed's CPU Adam steps it


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_adamw_steps_like_the_foreach_one_on_cuda():
    torch.manual_seed(0)
    weights = [torch.randn(64, 64, device="cuda", requires_grad=True) for _ in range(2)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for fused in (True, False):
        params = [w.detach().clone().requires_grad_() for w in weights]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        torch.optim.AdamW(params, lr=1e-3, fused=fused, foreach=None if fused else True).step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **FUSED_ADAMW)
