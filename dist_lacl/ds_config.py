"""The DeepSpeed dictionary a run uses: its ds_config file plus what the run config decides, checked.

Batch sizes, accumulation, precision, clipping and the optimizer come from the run config; the file
holds the ZeRO settings and may repeat the others only as "auto" or with equal values.
"""

from __future__ import annotations

import json

import torch

from .config import RunConfig
from .config_paths import find_deepspeed_config
from .errors import ConfigError


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    """The run config's DeepSpeed dictionary: ds_config file + entries derived from the run config.

    Batch sizes, accumulation, precision, clipping and the optimizer come from the run config; the file
    may repeat them ("auto" or equal values) but a different value is a ConfigError, never a silent pick.
    """
    t = cfg.train
    path = find_deepspeed_config(t.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed_config: {path} " + ("is a folder; expected a DeepSpeed JSON file"
                                                                 if path.is_dir() else "not found"))
    try:
        file_cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    offload = file_cfg.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"
    # Offloaded optimizer state runs DeepSpeed's CPU Adam (a JIT build) unless the file allows torch's.
    cpu_adam = offload and file_cfg.get("zero_force_ds_cpu_optimizer", True)
    derived = {
        "train_batch_size": t.ir_batch_size,
        "train_micro_batch_size_per_gpu": t.ir_batch_size // world_size,
        # Gradient caching splits the step itself; DeepSpeed must never accumulate or scale on its own.
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "optimizer": {"type": "AdamW", "params": {
            "lr": t.lr, "betas": list(t.adam_betas), "eps": t.adam_eps, "weight_decay": t.weight_decay,
            # torch's AdamW needs no JIT build; offloaded optimizer state needs DeepSpeed's CPU Adam.
            "torch_adam": not cpu_adam, **({"fused": True} if fused_adamw() and not offload else {})}},
    }
    merged = dict(file_cfg)
    for key, value in derived.items():
        if key not in file_cfg or file_cfg[key] == "auto":
            merged[key] = value
        elif isinstance(value, dict):
            merged[key] = _merge_checked(file_cfg[key], value, f"{path}: '{key}'", key)
        elif file_cfg[key] != value:
            raise ConfigError(f"{path}: '{key}' is {file_cfg[key]!r} but the run config gives {value!r} "
                              f"({_RUN_FIELD[key]}); remove it from the DeepSpeed file or make them agree")
    merged.setdefault("steps_per_print", 10**9)  # the trainer logs; DeepSpeed's own prints are noise
    merged.setdefault("wall_clock_breakdown", False)
    return merged


_RUN_FIELD = {"train_batch_size": "train.ir_batch_size", "train_micro_batch_size_per_gpu":
              "train.ir_batch_size / world size", "gradient_accumulation_steps": "always 1 with gradient caching",
              "gradient_clipping": "train.grad_clip", "bf16": "train.precision", "fp16": "train.precision",
              "optimizer": "train.lr, adam_betas, adam_eps, weight_decay"}


def _merge_checked(given: dict, derived: dict, where: str, key: str) -> dict:
    out = dict(given)
    for k, v in derived.items():
        if k not in given or given[k] == "auto":
            out[k] = v
        elif isinstance(v, dict) and isinstance(given[k], dict):
            out[k] = _merge_checked(given[k], v, f"{where}.{k}", key)
        elif given[k] != v and not (isinstance(v, list) and list(given[k]) == v):
            raise ConfigError(f"{where}.{k} is {given[k]!r} but the run config gives {v!r} ({_RUN_FIELD[key]})")
    return out


def fused_adamw() -> bool:
    """torch's fused AdamW (one kernel for all parameters) on CUDA; the tested foreach path on CPU."""
    return torch.cuda.is_available()
