"""Which policy version speaks a request: the base, or a version of the served model, by number or by alias.

No Ray here (sa_ray.serve speaks, actors/voice_server.py serves). `parse_version` reads what a request names.
`RegisteredPolicy` resolves it in the MLflow registry: `base` (no adapter), a version number, or an alias
(`latest`, `best`, `champion`, any other the registry holds) followed as the registry moves it, looked up
again at most every `serve.refresh_seconds`. A version's adapter is downloaded once (into <run_dir>/serve/
adapters) and checked against the base the endpoint loaded (`sa_ray.lineage`): an adapter of another base never
speaks. `LoadedVersions` keeps the voices of the versions a replica spoke with last, at most
`serve.max_versions`. `RegisteredPolicy.catalogue` is GET /v1/models: every version with its aliases, lineage
and recorded metrics.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Generic, TypeVar

from sa_ray import lineage, tracking

log = logging.getLogger(__name__)

BASE = "base"
MAX_VERSION = 2**31 - 1  # the registry's version numbers are 32-bit integers
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")  # the characters MLflow allows in an alias
# version tags that say what a version was made from, not how it scored (`lineage.tags`, `tracking.KEY_TAG`)
_LINEAGE_TAGS = {"base_fingerprint", "base_dir", "config", "eval_protocol", "run_id", "policy_version", "key"}


class UnknownVersion(FileNotFoundError):
    """A version a request (or serve.model) named that the registry does not hold: no such number, no such alias."""


class RefusedVersion(ValueError):
    """A registered version this endpoint cannot speak with (an adapter its engine cannot load)."""


def parse_version(value: object) -> str:
    """What a request's `version` names, as a string: `base`, a version number (`3` or `"3"` -> `"3"`) or an
    alias; ValueError naming the rule for anything else."""
    rule = 'a version number (3 or "3"), an alias (latest, best, champion) or base'
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be {rule}; got {type(value).__name__}")
    if isinstance(value, str) and len(value) > 64:
        raise ValueError(f"must be {rule}; got {len(value)} characters")
    if isinstance(value, int) or (value.isascii() and value.isdigit()):
        if not 1 <= int(value) <= MAX_VERSION:
            raise ValueError(f"must be {rule}; version numbers count from 1 to {MAX_VERSION}, got {int(value)}")
        return str(int(value))
    if value == BASE or _ALIAS.fullmatch(value):
        return value
    raise ValueError(f"must be {rule}; got {value!r}")


def label(version: int | None) -> str:
    """A version as the answer's X-Policy-Version says it: its number, or `base`."""
    return BASE if version is None else str(version)


class RegisteredPolicy:
    """The versions an endpoint can speak with: the base, and every version of the registered model `name`.
    `uri` (serve.model: `models:/<name>@<alias>`, `models:/<name>/<version>` or `base`) names the version a
    request that names none speaks with; while its alias points nowhere yet (`champion` before any version beat
    the base beyond noise) that is the base. Any version named is refused when trained on another base than
    `base_dir` (LineageError, naming both)."""

    def __init__(
        self,
        uri: str,
        tracking_uri: str,
        cache_dir: str | Path,
        base_dir: Path,
        base_fingerprint: str,
        name: str | None = None,
        refresh_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.uri, self.tracking_uri, self.cache_dir = uri, tracking_uri, Path(cache_dir)
        if uri == BASE:
            self.default = BASE
        else:
            ref_name, alias, version = tracking.model_ref(uri)
            name, self.default = name or ref_name, alias or str(version)
        if name is None:
            raise ValueError(f"{uri}: name the registered model whose versions a request may ask for")
        self.name, self.base_dir, self.base_fingerprint = name, base_dir, base_fingerprint
        self.refresh_seconds, self.clock = refresh_seconds, clock
        self._aliases: dict[str, tuple[float, int | None]] = {}  # alias -> (when looked up, its version)
        self._adapters: dict[int, Path] = {}  # versions downloaded and checked (a version never changes)

    @classmethod
    def of_config(cls, cfg, base_dir: str | Path) -> RegisteredPolicy:
        """`serve.model` of a config and the versions of its registered model, looked up in its tracking store
        every `serve.refresh_seconds`, cached under <run_dir>/serve/adapters, for the base in `base_dir` with the
        codec of <run_dir>/codec."""
        base_dir = Path(base_dir)
        return cls(
            cfg.serve.model_uri(cfg.name),
            tracking.resolve_uri(cfg.tracking.uri),
            Path(cfg.run_dir) / "serve" / "adapters",
            base_dir,
            lineage.fingerprint(base_dir, Path(cfg.run_dir) / "codec", cfg.codec.kind),
            name=cfg.serve.model_name(cfg.name),
            refresh_seconds=cfg.serve.refresh_seconds,
        )

    def resolve(self, asked: str | None = None) -> tuple[int | None, Path | None]:
        """(version, its adapter directory) of what `asked` names (`parse_version`'s; None: `uri`'s), (None,
        None) for the base. UnknownVersion when the registry holds no such version or alias."""
        asked_default = asked is None
        asked = self.default if asked_default else asked
        if asked == BASE:
            return None, None
        if asked.isdigit():
            return int(asked), self.adapter(int(asked), f"models:/{self.name}/{asked}")
        version = self._follow(asked)
        if version is None:
            if asked_default:  # serve.model's alias before it has a version: the base speaks until it has
                return None, None
            missing = "no version yet" if asked == "latest" else f"no alias {asked!r}"
            raise UnknownVersion(f"version {asked!r}: models:/{self.name} has {missing}")
        return version, self.adapter(version, f"models:/{self.name}/{version} (models:/{self.name}@{asked})")

    def _follow(self, alias: str) -> int | None:
        """The version `alias` points at, looked up again once `refresh_seconds` have passed. A lookup that fails
        (the registry out of reach, the alias moved to a version trained on another base) keeps the version the
        alias held (logged), and raises only when it held none yet."""
        now, held = self.clock(), self._aliases.get(alias)
        if held is not None and now - held[0] < self.refresh_seconds:
            return held[1]
        try:
            version = tracking.alias_version(self.name, alias, self.tracking_uri)
            if version is not None:  # a version that cannot speak here is never followed to
                self.adapter(version, f"models:/{self.name}/{version} (models:/{self.name}@{alias})")
        except Exception:
            if held is None:
                raise
            log.warning(
                "could not follow models:/%s@%s; still speaking version %s", self.name, alias, held[1], exc_info=True
            )
            version = held[1]
        self._aliases[alias] = (now, version)
        return version

    def adapter(self, version: int, what: str = "") -> Path:
        """Version `version`'s adapter directory: downloaded once into `cache_dir`, checked against the base
        (LineageError otherwise, naming `what`). UnknownVersion when the registry has no such version."""
        if version in self._adapters:
            return self._adapters[version]
        local = self.cache_dir / self.name / f"v{version}"
        if not (local / "adapter_config.json").is_file():
            try:
                tracking.download_model(f"models:/{self.name}/{version}", local, self.tracking_uri)
            except FileNotFoundError:
                raise UnknownVersion(f"version {version}: models:/{self.name} has no version {version}") from None
        lineage.check(local, self.base_fingerprint, self.base_dir, what or f"models:/{self.name}/{version}")
        self._adapters[version] = local
        return local

    def catalogue(self) -> dict:
        """GET /v1/models: the base and every registered version, newest first, each with its aliases (`latest`
        is the newest), the fingerprint of the base it was trained on and whether that is the base served here
        (`servable`), its recorded held-out sentence WER and every metric its tags record."""
        rows: list[dict] = [
            {"version": BASE, "aliases": [], "base_fingerprint": self.base_fingerprint, "servable": True}
        ]
        for found in sorted(tracking.model_versions(self.name, self.tracking_uri), key=lambda v: -v["version"]):
            tags = {k.removeprefix(lineage.TAG): v for k, v in found["tags"].items() if k.startswith(lineage.TAG)}
            metrics = {k: float(v) for k, v in tags.items() if k not in _LINEAGE_TAGS and _is_number(v)}
            created = found["created"]
            rows.append(
                {
                    "version": found["version"],
                    "aliases": found["aliases"],
                    "base_fingerprint": tags.get("base_fingerprint"),
                    "servable": tags.get("base_fingerprint") == self.base_fingerprint,
                    "heldout_sentences_wer": metrics.get(lineage.WER_TAG.removeprefix(lineage.TAG)),
                    "metrics": metrics,
                    "run_id": tags.get("run_id"),
                    "created": None
                    if created is None
                    else datetime.fromtimestamp(created / 1000, timezone.utc).isoformat(timespec="seconds"),
                }
            )
        return {"model": self.name, "default": self.uri, "base_fingerprint": self.base_fingerprint, "versions": rows}


def _is_number(text: str) -> bool:
    try:
        return float(text) == float(text)  # NaN is no metric
    except ValueError:
        return False


V = TypeVar("V")


class LoadedVersions(Generic[V]):
    """The voices of the last `capacity` versions asked for (`serve.max_versions`), the least recently used
    dropped first, before the next is loaded: a replica holds at most `capacity` merged copies of the AR model
    (torch) or adapters (vLLM), beside those a batch in flight still speaks with. Keyed by version number (None:
    the base), never by alias: a version an alias left stays as it was, and one that it moved to is loaded. Not
    thread-safe: the replica loads and speaks under one lock."""

    def __init__(self, capacity: int, load: Callable[[int | None, Path | None], V]):
        if capacity < 1:
            raise ValueError("a replica holds at least one version")
        self.capacity, self.load = capacity, load
        self._held: OrderedDict[int | None, V] = OrderedDict()

    def get(self, version: int | None, adapter: Path | None) -> V:
        if version in self._held:
            self._held.move_to_end(version)
            return self._held[version]
        while len(self._held) >= self.capacity:
            self._held.popitem(last=False)
        self._held[version] = voice = self.load(version, adapter)
        return voice

    def versions(self) -> list[str]:
        """The versions held, least recently used first, as X-Policy-Version says them."""
        return [label(v) for v in self._held]
