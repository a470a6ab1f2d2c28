"""The one module that touches DeepSpeed's API: an optimiser step that is plain torch or DeepSpeed ZeRO.

`make_stepper` returns a `Stepper` for AdamW + a LambdaLR schedule + gradient clipping, usable by any
trainer (the codec-LM pretrainer, the LoRA-DPO learner). With `zero_stage=None` it is exactly the
plain torch loop (`zero_grad; backward; clip_grad_norm_; step; scheduler.step`). With `zero_stage` 1
or 2 the same torch AdamW is handed to `deepspeed.initialize` as a client optimiser, and ZeRO
partitions its moments (and, at stage 2, the gradients) across the data-parallel ranks; clipping is
DeepSpeed's (`gradient_clipping`). Weights stay float32 and DeepSpeed's own fp16/bf16 modes are off:
mixed precision is the caller's `torch.autocast` around the forward, as on the plain path.

Checkpoints. `Stepper.optimizer` and `Stepper.scheduler` are what `sa_ray.checkpoint.save_state`
takes. On the plain path they are the torch AdamW and LambdaLR themselves. Under ZeRO,
`Stepper.optimizer` is an adapter whose `state_dict()` GATHERS the partitioned moments into torch
AdamW's own per-parameter layout (`{"state": {i: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups"}`,
i = position in `params`), so a ZeRO checkpoint is the same safetensors + JSON as a plain one: it
resumes on any number of ranks, with or without ZeRO, and nothing is ever pickled. Gathering is a
collective (one all-reduce per parameter and moment): EVERY rank must call `state_dict()`, only one
needs to write the files. `load_state_dict()` takes each rank's slice of the full tensors; call it
after the model's weights are loaded (`checkpoint.load_state` loads modules first), because it also
refreshes ZeRO's fp32 master copy of the weights from the model.

Process group: DeepSpeed needs torch.distributed and the LOCAL_RANK variable. Ray Train's
TorchTrainer sets up both (gloo on CPU) for any number of workers, one included; elsewhere (tests, a
script) `make_stepper` starts a gloo group of one on 127.0.0.1 and sets LOCAL_RANK=0. DeepSpeed builds
its CPU shared-memory comm op on first use (~25 s once per machine, cached under
~/.cache/torch_extensions; afterwards an engine starts in 2-4 s here).

DeepSpeed 0.19.8 internals this module relies on (checked by tests/test_deepspeed.py): the ZeRO-1/2
optimiser's `bit16_groups` (trainable params per group), `single_partition_of_fp32_groups` (this
rank's flat fp32 partition, the key of the client optimiser's state), `refresh_fp32_params()`, and
`_lazy_init_hp_params_optimizer_state()`, which links each parameter to its slice of the flat AdamW
state (DeepSpeed does it after its first step; a load into a fresh engine has to do it itself). The
per-parameter reads and writes go through the public `deepspeed.utils.safe_get/set_full_optimizer_state`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable

import torch

ZERO_STAGES = (1, 2)  # tested on CPU/gloo (tests/test_deepspeed.py); stage 3 shards weights: not wired


class Stepper:
    """Forward through `module`; then `backward(loss)` and `step()` (returns the pre-clip grad norm)."""

    def __init__(
        self,
        module: torch.nn.Module,
        params: list[torch.nn.Parameter],
        optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        grad_clip: float,
    ):
        self.module, self.params, self.optimizer, self.scheduler = module, params, optimizer, scheduler
        self.grad_clip = grad_clip

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(norm)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


class ZeroStepper(Stepper):
    """`module` is the DeepSpeed engine; `optimizer` is a `_GatheredZeroState` (checkpoint adapter)."""

    def __init__(self, engine, params, scheduler, grad_clip: float):
        super().__init__(engine, params, _GatheredZeroState(engine.optimizer, params), scheduler, grad_clip)
        self.engine = engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # the engine's step() zeroed the previous gradients

    def step(self) -> float:
        self.engine.step()  # reduce(-scatter) gradients, clip, AdamW step on this rank's partition, all-gather
        self.scheduler.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")


class _GatheredZeroState:
    """ZeRO-1/2 optimiser state <-> torch AdamW's per-parameter `state_dict` layout (see module doc)."""

    def __init__(self, zero_optimizer, params: list[torch.nn.Parameter]):
        self.zero, self.base = zero_optimizer, zero_optimizer.optimizer  # the client torch AdamW
        self.params = params
        index = {id(p): i for i, p in enumerate(params)}
        # ZeRO keeps one flat fp32 partition per param group, holding that group's trainable params
        self.groups = [[index[id(p)] for p in group] for group in self.zero.bit16_groups]

    def _flat(self, g: int) -> torch.Tensor:
        return self.zero.single_partition_of_fp32_groups[g]

    def state_dict(self) -> dict:
        from deepspeed.utils import safe_get_full_optimizer_state

        state: dict[int, dict] = {}
        for g, members in enumerate(self.groups):
            flat_state = self.base.state.get(self._flat(g), {})
            keys = [k for k, v in flat_state.items() if torch.is_tensor(v) and v.shape == self._flat(g).shape]
            for i in members:
                state[i] = {"step": flat_state["step"].clone()} if "step" in flat_state else {}
                for key in keys:  # collective: every rank contributes its slice
                    state[i][key] = safe_get_full_optimizer_state(self.params[i], key).detach().clone()
        groups = [
            {**{k: v for k, v in group.items() if k != "params"}, "params": members}
            for group, members in zip(self.base.param_groups, self.groups)
        ]
        return {"state": {i: s for i, s in state.items() if s}, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        if len(sd["param_groups"]) != len(self.groups) or any(
            saved["params"] != members for saved, members in zip(sd["param_groups"], self.groups)
        ):
            raise ValueError("optimizer checkpoint does not match the parameters being trained")
        self.zero.refresh_fp32_params()  # fp32 master weights <- the (just loaded) model weights
        for group, saved in zip(self.base.param_groups, sd["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
        state = {int(i): s for i, s in sd["state"].items()}
        if not state:
            return  # saved before the first step: AdamW creates its state lazily
        if not all(self.base.state.get(self._flat(g)) for g in range(len(self.groups))):
            # never stepped: create the flat state, then link each parameter's slice of it (DeepSpeed
            # does that itself after its first step)
            for g, members in enumerate(self.groups):
                first = state[members[0]]
                self.base.state[self._flat(g)] = {
                    k: torch.zeros_like(self._flat(g)) if k != "step" else v.clone() for k, v in first.items()
                }
            self.zero._hp_optimizer_states_linked = False
            self.zero._lazy_init_hp_params_optimizer_state()
        for g, members in enumerate(self.groups):
            first = state[members[0]]
            self.base.state[self._flat(g)]["step"].copy_(first["step"])
            for i in members:
                if not torch.equal(state[i]["step"], first["step"]):
                    raise ValueError("ZeRO keeps one AdamW step count per param group; the checkpoint has several")
                for key, value in state[i].items():
                    if key != "step":
                        safe_set_full_optimizer_state(self.params[i], value, key)


def ensure_process_group() -> None:
    """A gloo group of one on 127.0.0.1 unless torch.distributed is already initialised (Ray Train does),
    and the LOCAL_RANK variable that `deepspeed.initialize` insists on (Ray Train and torchrun set it)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    if "LOCAL_RANK" not in os.environ:
        if dist.get_world_size() != 1:
            raise RuntimeError("DeepSpeed needs LOCAL_RANK in the environment (Ray Train and torchrun set it)")
        os.environ["LOCAL_RANK"] = "0"


def release_process_group() -> None:
    """Undo `ensure_process_group` in a process that lives on (a test session, a notebook). Through DeepSpeed's
    own teardown, which also drops the groups it cloned from this world: destroyed by torch alone, they stay
    cached, and the next world's engine meets them unregistered ("Group ... is not registered")."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    import deepspeed.comm

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def make_stepper(
    model: torch.nn.Module,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    schedule: Callable[[int], float],
    grad_clip: float,
    zero_stage: int | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
) -> Stepper:
    """AdamW(params) with LambdaLR(schedule) and clipping at `grad_clip`.

    zero_stage None: plain torch; `wrap` (e.g. DDP) gives the module to call. zero_stage 1 or 2: a
    DeepSpeed ZeRO engine over `model` (it all-reduces itself, so `wrap` must be the identity).
    """
    params = list(params)
    if zero_stage is None:
        module = wrap(model)
        optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
        return Stepper(module, params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), grad_clip)
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be one of {ZERO_STAGES}, got {zero_stage}")
    import deepspeed

    ensure_process_group()
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)  # ZeRO's client optimiser
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)  # sets the lr in the groups ZeRO keeps
    # one bucket for small models (DeepSpeed's default, 5e8 elements, otherwise); sizes must be aligned
    bucket = min(500_000_000, -(-sum(p.numel() for p in params) // 1024) * 1024)
    config = {
        "train_micro_batch_size_per_gpu": 1,  # unused: batches are the caller's; DeepSpeed only logs it
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket},
        "steps_per_print": 2**62,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=params, config=config, dist_init_required=False
    )
    return ZeroStepper(engine, params, scheduler, grad_clip)
