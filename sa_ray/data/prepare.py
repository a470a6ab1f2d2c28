"""Corpus -> validated, tokenised utterances: the pure functions behind `jobs/prepare.py`.

The prepared dataset is a directory of Parquet datasets, one per split, plus a quarantine table:

    <run_dir>/data/train/            utterances the models train on
    <run_dir>/data/align/            sentences no model pretrains on (training voices): the align loop's prompts
    <run_dir>/data/heldout_sentences/  sentences never trained on (training voices)
    <run_dir>/data/heldout_voices/   voices never trained on (zero-shot)
    <run_dir>/data/quarantine/       rows that broke a rule, with `rule` and `detail`
    <run_dir>/data/summary.json      counts, durations, quarantine reasons, fingerprint
    <run_dir>/codec/                 the codec the codes were made with (same codes, same sound)

Schema of the split tables (README "Data formats" documents it for users): see `output_schema`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sa_ray.codec.base import Codec
from sa_ray.config import Config, CorpusConfig, PrepareConfig
from sa_ray.corpus.types import Utterance
from sa_ray.data.validate import Rejection, check_transcript, load_checked_audio
from sa_ray.text import normalize_text, phonemize

SPLITS = ("train", "align", "heldout_sentences", "heldout_voices")
QUARANTINE = "quarantine"
QUARANTINE_COLUMNS = ["utt_id", "speaker", "split", "source", "text", "audio_path", "rule", "detail"]


def output_schema(n_codebooks: int) -> pa.Schema:
    fields = [
        pa.field("utt_id", pa.string()),
        pa.field("speaker", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source", pa.string()),
        pa.field("text", pa.string()),  # as written in the corpus
        pa.field("text_norm", pa.string()),  # normalised (sa_ray.text.normalize_text)
        pa.field("phonemes", pa.string()),  # sa_ray.text.phonemize format
        pa.field("audio_path", pa.string()),
        pa.field("orig_sample_rate", pa.int32()),
        pa.field("duration", pa.float32()),  # seconds
        pa.field("frames", pa.int32()),  # codec frames per layer
        *[pa.field(f"codes_{k}", pa.list_(pa.int32())) for k in range(n_codebooks)],
        pa.field("phones", pa.list_(pa.string())),  # synthesiser alignment (null for recordings)
        pa.field("phone_ms", pa.list_(pa.int32())),
        pa.field("status", pa.string()),  # ok | quarantined
        pa.field("rule", pa.string()),
        pa.field("detail", pa.string()),
    ]
    return pa.schema(fields)


def load_corpus(corpus: CorpusConfig, progress: bool = True) -> tuple[list[Utterance], dict[str, set[str]]]:
    """Every utterance of the configured corpus (built first when synthetic) and the normalised texts
    reserved for the `heldout_sentences` and `align` splits."""
    if corpus.kind == "synthetic":
        from sa_ray.corpus.synthetic import (
            align_sentence_ids,
            build_synthetic_corpus,
            corpus_sentences,
            heldout_sentence_ids,
        )

        sentences = corpus_sentences(corpus)
        reserved = {
            "heldout_sentences": {normalize_text(sentences[i]) for i in heldout_sentence_ids(corpus)},
            "align": {normalize_text(sentences[i]) for i in align_sentence_ids(corpus)},
        }
        return build_synthetic_corpus(corpus, progress=progress), reserved
    from sa_ray.corpus.readers import read_corpus

    utts = read_corpus(corpus.kind, corpus.root)
    if corpus.max_utterances is not None:
        utts = utts[: corpus.max_utterances]
    return utts, sample_reserved_texts(utts, corpus)


def manifest_rows(utts: list[Utterance], corpus: CorpusConfig, reserved: dict[str, set[str]]) -> list[dict]:
    """Adds the split to every utterance and flags repeated ids (the first occurrence is kept)."""
    seen: set[str] = set()
    rows = []
    for u in utts:
        row = u.to_row()
        text = normalize_text(u.text)
        if u.speaker in corpus.heldout_voices:
            row["split"] = "heldout_voices"
        else:
            row["split"] = next((split for split, texts in reserved.items() if text in texts), "train")
        if u.utt_id in seen:
            row["rule"], row["detail"] = "duplicate_id", "utt_id already seen in this corpus"
        row["pre_rule"], row["pre_detail"] = row.pop("rule"), row.pop("detail")
        seen.add(u.utt_id)
        rows.append(row)
    return rows


def sample_reserved_texts(utts: list[Utterance], corpus: CorpusConfig) -> dict[str, set[str]]:
    """For recorded corpora: seeded samples of distinct normalised transcripts to hold out and to align on
    (at least one transcript is left for training)."""
    texts = sorted({normalize_text(u.text) for u in utts if u.speaker not in corpus.heldout_voices})
    k = min(corpus.heldout_sentences, max(0, len(texts) - 1))
    heldout = random.Random(corpus.seed).sample(texts, k)
    rest = sorted(set(texts) - set(heldout))
    aligned = random.Random(corpus.seed + 1).sample(rest, min(corpus.align_sentences, max(0, len(rest) - 1)))
    return {"heldout_sentences": set(heldout), "align": set(aligned)}


UNSET_LATER = {"prosody": 0.0, "renditions": 1}  # corpus settings whose default is the corpus they came after


def fingerprint(cfg: Config, rows: list[dict]) -> str:
    """Identifies a prepared dataset: same config sections + same inputs -> same fingerprint."""
    h = hashlib.sha256()
    for section in (cfg.corpus, cfg.codec, cfg.prepare):
        # settings added later count only when set: at their defaults they make the dataset of before
        settings = {k: v for k, v in section.__dict__.items() if UNSET_LATER.get(k, object()) != v}
        h.update(json.dumps(settings, sort_keys=True).encode())
    for r in rows:
        h.update(f"{r['utt_id']}|{r['speaker']}|{r['text']}|{r['audio_path']}\n".encode())
    return h.hexdigest()[:16]


def tokenize_rows(rows: list[dict], codec: Codec, rules: PrepareConfig, phonemes: str, encode: bool = True) -> pa.Table:
    """Validates, phonemises and encodes a batch of manifest rows; broken rows come back quarantined.

    With `encode=False` it only validates (status, rule, detail): the cheap pass of strict mode.
    """
    out = []
    ok_texts: list[str] = []
    for row in rows:
        text_norm = normalize_text(row["text"] or "")
        rejection = Rejection(row["pre_rule"], row.get("pre_detail") or "") if row.get("pre_rule") else None
        rejection = rejection or check_transcript(row["text"])
        wav, orig_sr = None, 0
        if rejection is None:
            wav, orig_sr, rejection = load_checked_audio(row["audio_path"], codec.sample_rate, rules)
        rec = {
            "utt_id": row["utt_id"],
            "speaker": row["speaker"],
            "split": row["split"],
            "source": row["source"],
            "text": row["text"],
            "text_norm": text_norm,
            "audio_path": row["audio_path"],
            "orig_sample_rate": orig_sr,
            "phones": row.get("phones"),
            "phone_ms": row.get("phone_ms"),
            "status": "ok" if rejection is None else "quarantined",
            "rule": rejection.rule if rejection else None,
            "detail": rejection.detail if rejection else None,
        }
        if wav is not None and encode:
            try:
                codes = codec.encode(wav, codec.sample_rate)
            except Exception as e:  # noqa: BLE001 - one utterance the codec cannot take must not end the job
                rec.update(status="quarantined", rule="codec_failed", detail=f"{type(e).__name__}: {str(e)[:200]}")
                out.append(rec)
                continue
            rec["duration"] = len(wav) / codec.sample_rate
            rec["frames"] = int(codes.shape[1])
            rec.update({f"codes_{k}": codes[k].astype(np.int32) for k in range(codes.shape[0])})
            ok_texts.append(text_norm)
        out.append(rec)
    # One phonemiser call per batch (a subprocess per sentence would dominate the stage).
    phones = iter(phonemize(ok_texts, backend=phonemes) if ok_texts and encode else [])
    for rec in out:
        rec["phonemes"] = next(phones) if rec["status"] == "ok" and encode else None
    return pa.Table.from_pylist(out, schema=output_schema(codec.n_codebooks))


def with_output(table: pa.Table) -> pa.Table:
    """Tokenised rows with the `output` each belongs in: its split when ok, else the quarantine."""
    ok = pc.equal(table["status"], "ok")
    return table.append_column("output", pc.if_else(ok, table["split"], pa.scalar(QUARANTINE)))


def write_output(rows: pa.Table, out_dir: str | Path, name: str | None = None) -> pa.Table:
    """One output of the prepared dataset (a split's ok rows or the quarantine, `with_output`'s `output`) from its
    rows in any order: `<out_dir>/<name>/part-0.parquet`, sorted by utt_id; an empty output is a readable empty
    table. Returns (output, rows) for Ray Data's `map_groups`, which calls it once per output."""
    name = name or rows["output"][0].as_py()
    if name == QUARANTINE:
        rows = rows.select(QUARANTINE_COLUMNS)
    else:
        rows = rows.drop_columns([c for c in ("status", "rule", "detail", "output") if c in rows.column_names])
    (Path(out_dir) / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(rows.sort_by("utt_id"), Path(out_dir) / name / "part-0.parquet")
    return pa.table({"output": [name], "rows": [len(rows)]})


def write_outputs(table: pa.Table, out_dir: str | Path) -> None:
    """Every output of tokenised rows held in one table (`write_output` for each split and the quarantine)."""
    table = with_output(table)
    for name in (*SPLITS, QUARANTINE):
        write_output(table.filter(pc.equal(table["output"], name)), out_dir, name)


def summarize(rows: Iterable[dict], fp: str, codec: Codec) -> dict:
    """Counts, hours and quarantine reasons of tokenised rows (only their metadata columns are read)."""
    counts, seconds, rules, resampled = Counter(), Counter(), Counter(), 0
    for r in rows:
        if r["status"] == "ok":
            counts[r["split"]] += 1
            seconds[r["split"]] += r["duration"]
            resampled += int(r["orig_sample_rate"] != codec.sample_rate)
        else:
            rules[r["rule"]] += 1
    return {
        "fingerprint": fp,
        "utterances": sum(counts.values()) + sum(rules.values()),
        "kept": sum(counts.values()),
        "quarantined": sum(rules.values()),
        "quarantine_reasons": dict(sorted(rules.items())),
        "resampled": resampled,
        "splits": {s: {"utterances": counts.get(s, 0), "hours": round(seconds.get(s, 0.0) / 3600, 4)} for s in SPLITS},
        "codec": {
            "kind": type(codec).__name__,
            "sample_rate": codec.sample_rate,
            "frame_rate": round(float(codec.frame_rate), 3),
            "n_codebooks": codec.n_codebooks,
            "codebook_size": codec.codebook_size,
        },
    }


def read_summary(data_dir: str | Path) -> dict | None:
    path = Path(data_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def require_prepared(run_dir: str | Path) -> dict:
    """The summary of <run_dir>/data, which every job after `prepare` starts from; FileNotFoundError without it."""
    summary = read_summary(Path(run_dir) / "data")
    if summary is None:
        raise FileNotFoundError(f"no prepared data in {Path(run_dir) / 'data'}: run `python -m jobs.prepare` first")
    return summary


def check_heldout_audio(data_dir: str | Path) -> None:
    """Evaluation reads the held-out utterances' real audio (speaker similarity, the golden ceiling): fail
    before any work, naming a file, when it is not where the prepared data says it is."""
    for split in ("heldout_sentences", "heldout_voices"):
        paths = pq.read_table(Path(data_dir) / split, columns=["audio_path"]).column("audio_path").to_pylist()
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{Path(data_dir) / split}: the audio of {len(missing)} of {len(paths)} utterances is missing, e.g. "
                f"{missing[0]}; prepared data keeps audio paths as prepare found them (a relative corpus.cache_dir "
                f"is relative to the directory prepare ran in, not {Path.cwd()}): run from that directory, or "
                "prepare again with an absolute corpus.cache_dir"
            )
