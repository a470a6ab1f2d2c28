"""What a policy version was made from, so that an adapter is only ever put on the base it was trained on.

An adapter's weights are a difference to one base model: merged into another (`checkpoints/base-big` instead of
`checkpoints/base`, a re-trained base, another codec's codes) they make noise without a word. So every adapter
carries `lineage.json` (its base's fingerprint, the run, the config name and the evaluation protocol), every
registered version carries the same as tags, and `check` refuses a mismatch, naming both sides.

The fingerprint is a hash of the base's AR and NAR files and of the codec directory its codes came from
(`<run_dir>/codec`: the fitted codebooks; a pretrained neural codec is named by its kind).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

LINEAGE = "lineage.json"
TAG = "sa_ray."  # registry tags: sa_ray.base_fingerprint, sa_ray.run_id, sa_ray.config, sa_ray.eval_protocol
WER_TAG = TAG + "heldout_sentences_wer"  # and the held-out sentence WER its evaluation recorded


class LineageError(ValueError):
    """An adapter meant for another base model (or of unknown origin) was about to be used."""


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def fingerprint(base_dir: str | Path, codec_dir: str | Path, codec_kind: str) -> str:
    """16 hex digits naming a base model (AR + NAR weights and configs) together with its codec."""
    base_dir, codec_dir = Path(base_dir), Path(codec_dir)
    digest = hashlib.sha256(codec_kind.encode())
    for root, name in ((base_dir / "ar", "ar"), (base_dir / "nar", "nar"), (codec_dir, "codec")):
        for path in _files(root):
            digest.update(f"{name}/{path.relative_to(root)}\0".encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def protocol_key(protocol: dict) -> str:
    """A short name of an evaluation protocol (eval.*): numbers of different protocols are never compared."""
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]


def write(adapter_dir: str | Path, lineage: dict) -> None:
    (Path(adapter_dir) / LINEAGE).write_text(json.dumps(lineage, indent=1, sort_keys=True))


def read(adapter_dir: str | Path) -> dict | None:
    path = Path(adapter_dir) / LINEAGE
    return json.loads(path.read_text()) if path.is_file() else None


def tags(lineage: dict) -> dict[str, str]:
    """A lineage as registry tags."""
    return {TAG + key: str(value) for key, value in lineage.items()}


def check(adapter_dir: str | Path, base_fingerprint: str, base_dir: str | Path, what: str = "") -> dict:
    """The adapter's lineage when it was made on this base; LineageError naming both bases otherwise."""
    name = what or str(adapter_dir)
    lineage = read(adapter_dir)
    if lineage is None:
        raise LineageError(
            f"{name} carries no {LINEAGE}: nothing says which base model it was trained on, so it is not merged "
            f"into {base_dir} (base {base_fingerprint}); train it again with this version of sa-ray"
        )
    if lineage.get("base_fingerprint") != base_fingerprint:
        raise LineageError(
            f"{name} was trained on base {lineage.get('base_fingerprint')} ({lineage.get('base_dir', '?')}), "
            f"not on the base loaded here, {base_fingerprint} ({base_dir}): an adapter only fits its own base"
        )
    return lineage


def beats(record: dict, champion: dict | None, versus_champion: dict | None) -> tuple[bool, str]:
    """Whether a version's evaluation `record` should be served by default (the `champion` alias), and why.

    It must beat the base beyond the noise of the evaluation: the paired bootstrap interval of its held-out
    sentence WER change against the base lies below zero. Where a champion of the same base and protocol exists,
    it must beat that too: beyond noise when both were evaluated by one run (`versus_champion`: the paired change
    against it, `sa_ray.metrics.stats.record_wer_changes`), else by a lower WER."""
    key = "heldout_sentences_wer_change"
    hi = record.get(f"{key}_hi")
    if hi is None:
        return False, "no paired change against the base to judge it by"
    if hi >= 0:
        return (
            False,
            f"its WER change against the base, {record[key]:+.3f} [{record[f'{key}_lo']:+.3f}, {hi:+.3f}], is within the noise",
        )
    if champion is None:
        return True, f"it beats the base beyond noise ({record[key]:+.3f}, interval below zero)"
    if versus_champion is not None:
        if versus_champion.get(f"{key}_hi", 0.0) < 0:
            return True, f"it beats the champion beyond noise ({versus_champion[key]:+.3f})"
        return False, f"it does not beat the champion beyond noise ({versus_champion.get(key, float('nan')):+.3f})"
    if record["heldout_sentences_wer"] < champion["heldout_sentences_wer"]:
        return True, "it beats the base beyond noise and has a lower WER than the champion of another run"
    return False, "the champion of another run has a lower WER"
