"""The codec LM: vocabulary and sequence layout, AR model (HF causal LM), NAR model."""

from __future__ import annotations

from pathlib import Path


def base_model_dir(cfg, given: str | Path | None = None, how: str = "set align.base_model") -> Path:
    """The base model a job builds on (ar/ + nar/): `given`, else align.base_model, else <run_dir>/pretrain/model;
    FileNotFoundError saying how to make or name one."""
    base_dir = Path(given or cfg.align.base_model or Path(cfg.run_dir) / "pretrain" / "model").resolve()
    if not (base_dir / "ar" / "vocab.json").is_file():
        raise FileNotFoundError(f"no base model in {base_dir}: run `python -m jobs.pretrain` or {how}")
    return base_dir
