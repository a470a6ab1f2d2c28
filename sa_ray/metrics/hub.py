"""Where the transformers metric backends (Whisper, WavLM, MOS) find their models: a local directory or a
Hugging Face hub id, and how a backend string names the model."""

from __future__ import annotations

import os
import re
from pathlib import Path

# A Hugging Face hub id: "name" or "owner/name", of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?")


def resolve_model(name: str) -> tuple[str, bool]:
    """(what to pass to `from_pretrained`, local_files_only) for a local model directory or a hub id.

    An existing directory wins over a hub id of the same spelling. A name that cannot be a hub id
    (absolute, ~ or ./ prefixed, or with more than one '/') must exist: FileNotFoundError naming it, raised
    before transformers is loaded. `local_files_only` follows HF_HUB_OFFLINE, so that an offline machine
    fails at once with the cache's error instead of waiting on network timeouts.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), _offline()
    if path.exists():
        raise FileNotFoundError(f"model path {name!r} is a file; expected a model directory")
    if name.startswith((".", "~", "/")) or not _HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"model directory {name!r} does not exist (and {name!r} is not a hub id)")
    return name, _offline()


def load_audio_model(name: str, model_class: str):
    """(feature extractor, model) of a transformers audio model: a local directory or hub id, where
    `model_class` names the transformers class (imported only now: a bad path fails before transformers)."""
    source, local_only = resolve_model(name)
    import transformers

    features = transformers.AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
    return features, getattr(transformers, model_class).from_pretrained(source, local_files_only=local_only)


def model_label(name: str) -> str:
    """The model's name in a backend string: a hub id as given, a local directory by its own name
    (a full path would make the same model's results look different on every machine)."""
    path = Path(name).expanduser()
    return path.resolve().name if path.is_dir() else name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
