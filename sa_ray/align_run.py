"""The align job's directory: where every stage's output lives, and which stages are done.

    <run_dir>/align/
      state.json              the MLflow parent run id (a resubmitted job continues that run)
      probe.json              the fixed probe sequence (prompt + continuation)
      pairs/iter_<i>/         the pair set of iteration i (Parquet + _manifest.json with each file's sha256;
                              committed atomically; a file changed since is detected and the set made again)
      learner/iter_<i>/       Ray Train checkpoints of iteration i's learner (resumed when present)
      adapters/v<k>/          policy version k (PEFT layout + probe.json with the learner's probe logprob
                              + learner.json, the final metrics of the learner that made it
                              + lineage.json, the base it was trained on: sa_ray.lineage)
      critics/v<k>/           PPO's critic version k (adapter/ + head.safetensors + critic.json, its fit's final
                              metrics + lineage.json), made beside adapter v_k; version 0's is a fresh one
      records/iter_<k>.json   metrics of policy version k (k = 0 is the base), written when k is evaluated,
                              with the align settings it was made with (`align_settings`)
      summary.json            the per-iteration table

A stage is done when its output exists, so a killed job resumes after the last completed stage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from sa_ray import atomic, lineage
from sa_ray.preference import damaged_files, read_manifest

log = logging.getLogger(__name__)


class AlignRun:
    def __init__(self, run_dir: str | Path, made_from: dict | None = None):
        """`made_from`: the lineage every adapter of this run carries (sa_ray.lineage); the adapters a resumed run
        finds must carry the same base, or it stops, naming both."""
        self.root = Path(run_dir).resolve() / "align"
        self.made_from = made_from
        for sub in ("pairs", "learner", "adapters", "critics", "records"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # a pair set, an adapter or a critic a killed job never committed (hidden siblings: atomic.aside)
        for stale in [
            *(self.root / "pairs").glob(".*.staging-*"),
            *(self.root / "adapters").glob(".v*.*"),
            *(self.root / "critics").glob(".v*.*"),
        ]:
            shutil.rmtree(stale, ignore_errors=True)
        if made_from:
            for made in sorted([*(self.root / "adapters").glob("v*"), *(self.root / "critics").glob("v*")]):
                lineage.check(made, made_from["base_fingerprint"], made_from["base_dir"], f"{made} (resumed)")

    # ------------------------------------------------------------------------------------------ paths

    def pairs(self, i: int) -> Path:
        return self.root / "pairs" / f"iter_{i}"

    def adapter(self, k: int) -> Path | None:
        return None if k == 0 else self.root / "adapters" / f"v{k}"

    def critic(self, k: int) -> Path | None:
        return None if k == 0 else self.root / "critics" / f"v{k}"

    def learner_storage(self) -> Path:
        return self.root / "learner"

    # ------------------------------------------------------------------------------------------ state

    def pairs_done(self, i: int) -> dict | None:
        """The committed pair set's manifest; None when it is not committed, or is damaged (then it is made again:
        a pair file that changed on disk is never trained on)."""
        manifest = read_manifest(self.pairs(i))
        if manifest and (damaged := damaged_files(self.pairs(i), manifest)):
            log.warning("pair set %s: %s changed since it was committed; rolling it out again", i, ", ".join(damaged))
            return None
        return manifest

    def learned(self, k: int) -> dict | None:
        """The final metrics of the learner that made version k, once v_k is committed (None before)."""
        path = self.adapter(k) / "learner.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def commit_adapter(self, source: Path, k: int, metrics: dict) -> Path:
        """v_k and its learner's metrics appear together, whole, or not at all."""
        tmp = atomic.aside(self.adapter(k))
        shutil.copytree(source, tmp)
        (tmp / "learner.json").write_text(json.dumps(metrics, indent=1))
        if self.made_from:
            lineage.write(tmp, self.made_from)
        return atomic.swap_in(tmp, self.adapter(k))

    def critic_fitted(self, k: int) -> dict | None:
        """The final metrics of the fit that made critic version k, once it is committed (None before)."""
        path = self.critic(k) / "critic.json" if k else None
        return json.loads(path.read_text()) if path and path.is_file() else None

    def commit_critic(self, staging: Path, k: int, metrics: dict) -> Path:
        """Critic v_k, saved by the critic role into `staging` (an `atomic.aside` of `critic(k)`), and its fit's
        metrics appear together, whole, or not at all."""
        (staging / "critic.json").write_text(json.dumps(metrics, indent=1))
        if self.made_from:
            lineage.write(staging, self.made_from)
        return atomic.swap_in(staging, self.critic(k))

    def probe(self, k: int) -> dict | None:
        """Probe sequence and the learner's logprob for version k (None for the base: the reference computes it)."""
        return None if k == 0 else json.loads((self.adapter(k) / "probe.json").read_text())

    def record(self, k: int) -> dict | None:
        path = self.root / "records" / f"iter_{k}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_record(self, k: int, record: dict) -> None:
        _write_json(self.root / "records" / f"iter_{k}.json", record)

    def load(self, name: str) -> dict | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, name: str, data: dict) -> None:
        _write_json(self.root / name, data)


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


TABLE = [
    ("iter", "iteration", "{:>4}"),
    ("WER sent", "heldout_sentences_wer", "{:>8.3f}"),
    ("SIM sent", "heldout_sentences_sim", "{:>8.3f}"),
    ("WER voice", "heldout_voices_wer", "{:>9.3f}"),
    ("SIM voice", "heldout_voices_sim", "{:>9.3f}"),
    ("PER sent", "heldout_sentences_phone_error_rate", "{:>8.3f}"),
    ("PER voice", "heldout_voices_phone_error_rate", "{:>9.3f}"),
    ("dur", "heldout_sentences_duration_ratio", "{:>5.2f}"),
    ("no EOS", "heldout_sentences_eos_failure_rate", "{:>6.2f}"),
    ("gold NLL", "heldout_sentences_golden_nll", "{:>8.3f}"),
    ("rep", "heldout_sentences_repetition_rate", "{:>5.2f}"),
    ("NAR gold", "nar_golden_wer", "{:>8.3f}"),
    ("NAR syn", "nar_synthetic_wer", "{:>7.3f}"),
    ("probe", "gap_probe_acc", "{:>5.2f}"),
    ("paired", "gap_paired_probe_acc", "{:>6.2f}"),
    ("MMD", "gap_mmd", "{:>6.3f}"),
    ("pairs", "pairs", "{:>6.0f}"),
    ("rew chosen", "pairs_chosen_reward", "{:>10.3f}"),
    ("rew rejected", "pairs_rejected_reward", "{:>12.3f}"),
    ("dpo loss", "dpo_loss", "{:>8.3f}"),
    ("rew acc", "reward_acc", "{:>7.2f}"),
    ("tok/s", "rollout_tokens_per_s", "{:>7.0f}"),
    ("rollout s", "rollout_seconds", "{:>9.0f}"),
    ("learn s", "learn_seconds", "{:>7.0f}"),
    ("eval s", "eval_seconds", "{:>6.0f}"),
]


def stalled_since(records: list[dict], patience: int) -> int | None:
    """The version with the best held-out WER when `patience` later ones did no better (early stopping; 0 = never)."""
    if not patience:
        return None
    best_k = min(range(len(records)), key=lambda j: records[j]["heldout_sentences_wer"])
    return best_k if len(records) - 1 - best_k >= patience else None


def format_table(records: list[dict]) -> str:
    """The per-iteration table the job prints (iteration k = the policy after k iterations; 0 = base)."""
    lines = [" ".join(_pad(h, fmt) for h, _, fmt in TABLE)]
    for r in records:
        cells = []
        for _, key, fmt in TABLE:
            value = r.get(key)
            cells.append(fmt.format(value) if isinstance(value, (int, float)) else _pad("-", fmt))
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _pad(text: str, fmt: str) -> str:
    width = int(fmt[3:].split(".")[0].rstrip("f}"))
    return f"{text:>{width}}"


def settings_changes(before: dict, now: dict) -> list[str]:
    """`align.<key>: old -> new` for each align setting (but the iteration count) that differs between the
    settings an earlier version was made with and the current ones: a resumed run continues under changed
    overrides (that is how an SFT iteration is followed by a preference one), so the change is said."""
    return [
        f"align.{key}: {before[key]!r} -> {now.get(key)!r}"
        for key in sorted(before)
        if key != "iterations" and before[key] != now.get(key)
    ]


def format_changes(record: dict) -> str:
    """The held-out WER change of a policy version against the base, with its 95% paired-bootstrap interval (a
    change whose interval holds 0 is within the evaluation's noise) and its minimum detectable change (MDE: the
    change this evaluation detects 80% of the time; a smaller true one it mostly misses). Records of older runs
    have no MDE."""
    cells = []
    for split, name in (("heldout_sentences", "sentences"), ("heldout_voices", "voice")):
        if f"{split}_wer_change" in record:
            d, lo, hi = (record[f"{split}_wer_change{s}"] for s in ("", "_lo", "_hi"))
            mde = record.get(f"{split}_wer_change_mde")
            cells.append(f"{name} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (f" MDE {mde:.3f}" if mde is not None else ""))
    label = f"iter {record['iteration']}: WER change vs base (95% interval over sentences, MDE at 80% power)"
    return f"{label}: {', '.join(cells)}" if cells else f"{label}: - (no per-utterance errors recorded)"


def format_summary(records: list[dict]) -> str:
    """What the job prints at its end: the whole table, each version's WER change, the golden ceiling and the
    speaker-similarity floor."""
    base = records[0]
    ceiling = (
        f"golden ceiling (same codec, same ASR): WER sent {base.get('heldout_sentences_golden_wer', float('nan')):.3f}, "
        f"WER voice {base.get('heldout_voices_golden_wer', float('nan')):.3f}; SIM to another speaker (floor): "
        f"sent {base.get('heldout_sentences_sim_other_speaker', float('nan')):.3f}, "
        f"voice {base.get('heldout_voices_sim_other_speaker', float('nan')):.3f}"
    )
    return "\n".join([format_table(records), "\n".join(format_changes(r) for r in records[1:]), ceiling])
