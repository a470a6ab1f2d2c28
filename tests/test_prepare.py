"""`jobs.prepare` end to end on a local Ray cluster: synthetic slice, bad files, strict mode, MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs import _cli, prepare
from sa_ray import tracking
from sa_ray.corpus.voices import Voice

from .conftest import REPO, mlflow_store

pytestmark = pytest.mark.slow


def _table(run_dir, split):
    return pq.read_table(Path(run_dir) / "data" / split)


def test_prepare_writes_every_split_with_the_documented_schema(prepared_tiny):
    cfg, _, summary = prepared_tiny
    # 48 sentences, 6 held out, + 8 align sentences; us1/us2 speak all 56, en1 (held-out voice) only the 6 held-out ones.
    assert summary["splits"]["train"]["utterances"] == 2 * 42
    assert summary["splits"]["heldout_sentences"]["utterances"] == 2 * 6
    assert summary["splits"]["align"]["utterances"] == 2 * 8
    assert summary["splits"]["heldout_voices"]["utterances"] == 6
    assert summary["quarantined"] == 0 and summary["kept"] == summary["utterances"] == 118

    train = _table(cfg.run_dir, "train")
    for col in [
        "utt_id",
        "speaker",
        "split",
        "text",
        "text_norm",
        "phonemes",
        "frames",
        "duration",
        "codes_0",
        "codes_1",
        "source",
        "phones",
        "phone_ms",
    ]:
        assert col in train.column_names, col
    rows = train.to_pylist()
    assert [r["utt_id"] for r in rows] == sorted(r["utt_id"] for r in rows)
    assert {r["speaker"] for r in rows} == {"mbrola-us1", "mbrola-us2"}
    for r in rows:
        assert len(r["codes_0"]) == len(r["codes_1"]) == r["frames"] > 0
        assert 0 <= min(r["codes_0"]) and max(r["codes_0"]) < cfg.codec.codebook_size
        # ~43 code frames per second of audio
        assert abs(r["frames"] / r["duration"] - summary["codec"]["frame_rate"]) < 2.0
        assert r["phonemes"] and r["text_norm"] == r["text_norm"].lower()
        assert sum(r["phone_ms"]) == pytest.approx(r["duration"] * 1000, abs=30)
    # held-out sentences never appear in training, held-out voices never speak in training
    held = _table(cfg.run_dir, "heldout_sentences").to_pylist()
    assert not {r["text_norm"] for r in held} & {r["text_norm"] for r in rows}
    # the align loop's sentences are new to the base model too, and to the held-out sets
    aligned = {r["text_norm"] for r in _table(cfg.run_dir, "align").to_pylist()}
    assert len(aligned) == 8 and not aligned & ({r["text_norm"] for r in rows} | {r["text_norm"] for r in held})
    assert {r["speaker"] for r in _table(cfg.run_dir, "heldout_voices").to_pylist()} == {"mbrola-en1"}
    assert _table(cfg.run_dir, "quarantine").num_rows == 0  # present and readable, though empty
    # the codec the codes were made with is saved beside them, and the recognisers' domain LM beside the data
    assert (Path(cfg.run_dir) / "codec" / "codec.json").is_file()
    assert all((Path(cfg.run_dir) / "data" / "asr_lm" / f).stat().st_size for f in ("domain.lm", "domain.dict"))


def test_rerun_is_idempotent(prepared_tiny, capsys):
    cfg, argv, summary = prepared_tiny
    data = Path(cfg.run_dir) / "data"
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    again = prepare.main(argv)
    assert again == summary
    assert "already prepared" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before


def test_mlflow_run_holds_params_metrics_and_artifacts(prepared_tiny):
    cfg, _, summary = prepared_tiny
    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(cfg.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`sa_ray.job` = 'prepare'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["codec.n_codebooks"] == "2"
    assert run.data.metrics["kept"] == summary["kept"]
    assert run.data.metrics["train_utterances"] == summary["splits"]["train"]["utterances"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "codec"} <= names
    local = client.download_artifacts(run.info.run_id, "summary.json")
    assert json.loads(Path(local).read_text()) == summary


# ----------------------------------------------------------------------------- bad input, quarantined


def _write_bad_librispeech(root: Path, speech: Path) -> dict[str, str]:
    """A LibriSpeech-layout corpus with one file per rule (plus good ones). Returns utt_id -> expected rule."""
    wav, sr = sf.read(speech, dtype="float32")
    chapter = root / "11" / "22"
    chapter.mkdir(parents=True)
    lines, expected = [], {}

    def add(utt, text, rule, audio=None, rate=sr, raw=None):
        path = chapter / f"{utt}.flac"
        if raw is not None:
            path.write_bytes(raw)
        elif audio is not None:
            sf.write(path, audio, rate, format="FLAC")
        lines.append(f"{utt} {text}")
        expected[utt] = rule

    add("11-22-0000", "HELLO THERE MY OLD FRIEND", None, wav)
    add("11-22-0001", "HELLO THERE MY OLD FRIEND", None, wav[::2], rate=sr // 2)  # 8 kHz: resampled, kept
    add("11-22-0002", "THIS FILE IS BROKEN", "unreadable_audio", raw=b"not a flac file at all")
    add("11-22-0003", "THIS FILE IS MISSING", "unreadable_audio")
    add("11-22-0004", "", "empty_transcript", wav)
    add("11-22-0005", "%%% ### ---", "non_text_transcript", wav)
    add("11-22-0006", "SO SILENT", "silent_audio", np.zeros(sr, np.float32))
    add("11-22-0007", "TOO SHORT", "too_short", wav[: sr // 10])
    add("11-22-0008", "TOO LONG", "too_long", np.tile(wav, 16))
    add("11-22-0010", "HOURS OF SILENCE", "too_long", raw=(root.parent / "hours.flac").read_bytes())
    sf.write(chapter / "cut.flac", wav, sr, format="FLAC")
    add("11-22-0011", "CUT SHORT", "unreadable_audio", raw=(chapter / "cut.flac").read_bytes()[:2000])
    (chapter / "cut.flac").unlink()
    (chapter / "._11-22-0000.flac").write_bytes(bytes(64))  # a macOS resource fork: not the corpus's
    binary = root / "33" / "44"
    binary.mkdir(parents=True)
    (binary / "33-44.trans.txt").write_bytes(bytes(range(256)) * 8)  # one entry, not 8 "utterances"
    expected["33-44.trans.txt"] = "unreadable_transcript"
    lines.append("11-22-0000 HELLO AGAIN")  # a repeated id: the first one is kept
    (chapter / "11-22.trans.txt").write_text("\n".join(lines) + "\n")
    # an empty audio file: a valid header and no samples (libsndfile reads by content, not by name)
    sf.write(chapter / "11-22-0009.flac", np.zeros(0, np.float32), sr, format="WAV")
    (chapter / "11-22.trans.txt").write_text("\n".join(lines) + "\n11-22-0009 NOTHING HERE\n")
    expected["11-22-0009"] = "empty_audio"
    return expected


@pytest.fixture
def bad_corpus(tmp_path):
    speech = tmp_path / "speech.wav"
    Voice.parse("mbrola-us1").synthesize("Hello there, my old friend.", speech)
    with sf.SoundFile(tmp_path / "hours.flac", "w", samplerate=8000, channels=1, format="FLAC") as f:
        for _ in range(180):  # three hours of silence: 0.3 MB of FLAC, refused from its header
            f.write(np.zeros(8000 * 60, np.float32))
    root = tmp_path / "LibriSpeech"
    return root, _write_bad_librispeech(root, speech)


def _bad_argv(tmp, root, *extra):
    return [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        f"run_dir={tmp / 'run'}",
        "corpus.kind=librispeech",
        f"corpus.root={root}",
        "corpus.heldout_sentences=0",
        "corpus.align_sentences=0",
        f"tracking.uri={mlflow_store(tmp / 'mlflow.db')}",
        "codec.n_codebooks=2",
        "codec.codebook_size=8",
        "prepare.encoders=1",
        "prepare.batch_size=4",
        *extra,
    ]


def test_bad_files_are_quarantined_with_their_reason(tmp_path, bad_corpus, ray_local):
    root, expected = bad_corpus
    summary = prepare.main(_bad_argv(tmp_path, root))
    quarantine = {r["utt_id"]: r for r in _table(tmp_path / "run", "quarantine").to_pylist()}
    want_bad = {u: rule for u, rule in expected.items() if rule}
    assert {u: r["rule"] for u, r in quarantine.items() if u != "11-22-0000"} == want_bad
    assert quarantine["11-22-0000"]["rule"] == "duplicate_id"  # the repeat, not the original
    assert all(r["detail"] for r in quarantine.values())
    kept = {r["utt_id"]: r for r in _table(tmp_path / "run", "train").to_pylist()}
    assert set(kept) == {"11-22-0000", "11-22-0001"}
    assert kept["11-22-0000"]["text"] == "HELLO THERE MY OLD FRIEND"  # the first occurrence
    assert kept["11-22-0001"]["orig_sample_rate"] == 8000
    assert summary["resampled"] == 2  # 16 kHz and 8 kHz sources, both resampled to the codec's rate
    assert summary["quarantined"] == len(want_bad) + 1
    assert summary["quarantine_reasons"]["unreadable_audio"] == 3
    assert "from the header, not decoded" in quarantine["11-22-0010"]["detail"]


def test_strict_mode_stops_naming_the_file_and_rule(tmp_path, bad_corpus, ray_local, capsys):
    root, _ = bad_corpus
    with pytest.raises(SystemExit) as stop:
        _cli.run(prepare.main, _bad_argv(tmp_path, root, "prepare.strict=true", "prepare.batch_size=32"))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broke rule" in err and "Traceback" not in err
    assert "11-22-000" in err and ".flac" in err
    assert not (tmp_path / "run" / "data").exists()  # nothing half-written
