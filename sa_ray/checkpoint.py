"""Training state <-> a directory of safetensors + JSON. Nothing here ever unpickles.

Model weights, optimiser moments, the LR scheduler, RNG states and the data position all round-trip
exactly, so a resumed run reproduces the uninterrupted one step for step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _flat_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(
    directory: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
    extra: dict,
) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, d / f"{name}.safetensors")
    meta = {"extra": extra, "optimizers": {}, "schedulers": {k: s.state_dict() for k, s in schedulers.items()}}
    for name, opt in optimizers.items():
        tensors, opt_meta = _flat_optimizer(opt)
        save_file(tensors, d / f"optim_{name}.safetensors")
        meta["optimizers"][name] = opt_meta
    # Only torch's global RNG (dropout) is global state here; data order uses explicit seeded RNGs.
    save_file({"torch": torch.get_rng_state()}, d / "rng.safetensors")
    (d / "state.json").write_text(json.dumps(meta))


def load_state(
    directory: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
) -> dict:
    """Restores everything `save_state` wrote; returns its `extra` (e.g. step and data position)."""
    d = Path(directory)
    meta = json.loads((d / "state.json").read_text())
    for name, module in modules.items():
        module.load_state_dict(load_file(d / f"{name}.safetensors"))
    for name, opt in optimizers.items():
        _load_optimizer(opt, load_file(d / f"optim_{name}.safetensors"), meta["optimizers"][name])
    for name, sched in schedulers.items():
        sched.load_state_dict(meta["schedulers"][name])
    torch.set_rng_state(load_file(d / "rng.safetensors")["torch"])
    return meta["extra"]
