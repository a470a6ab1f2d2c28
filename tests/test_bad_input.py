"""What a real corpus directory holds besides good audio, met by `prepare`'s library functions (no Ray): files
refused from their header before they are decoded, truncated and non-finite audio, a codec that fails on one
utterance, transcript files that are not text, and the resource forks macOS leaves beside every file."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from sa_ray.codec import load_codec
from sa_ray.config import PrepareConfig
from sa_ray.corpus.readers import read_librispeech, read_vctk
from sa_ray.data.prepare import tokenize_rows
from sa_ray.data.validate import RULES, load_checked_audio

RULES_20S = PrepareConfig()


def _hours_of_silence(path, hours: float, sr: int = 8000):
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC") as f:
        minute = np.zeros(sr * 60, np.float32)
        for _ in range(int(hours * 60)):
            f.write(minute)
    return path


def test_hours_of_silence_are_refused_from_the_header_without_decoding(tmp_path):
    path = _hours_of_silence(tmp_path / "long.flac", 2)
    assert path.stat().st_size < 400_000  # two hours in a few hundred kB: decoded, 230 MB of float32
    tracemalloc.start()
    wav, sr, rejection = load_checked_audio(str(path), 16000, RULES_20S)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (
        wav is None and rejection.rule == "too_long" and "7200.00 s (from the header, not decoded)" in rejection.detail
    )
    assert peak < 5 * 2**20, peak


def test_truncated_foreign_and_non_finite_audio_are_quarantined_with_a_reason(tmp_path):
    sr = 16000
    speech = (np.sin(np.arange(sr * 3) / 10) * 0.3).astype(np.float32)
    sf.write(tmp_path / "good.flac", speech, sr)
    data = (tmp_path / "good.flac").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(data[: len(data) // 2])  # a copy cut short: the header still says 3 s
    (tmp_path / "image.flac").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    nan = speech.copy()
    nan[100] = np.nan
    sf.write(tmp_path / "nan.flac", nan, sr, format="WAV", subtype="FLOAT")  # libsndfile reads by content
    assert load_checked_audio(str(tmp_path / "good.flac"), sr, RULES_20S)[2] is None
    for name, detail in [("truncated", "lost sync"), ("image", "Format not recognised"), ("nan", "NaN or infinity")]:
        wav, _, rejection = load_checked_audio(str(tmp_path / f"{name}.flac"), sr, RULES_20S)
        assert wav is None and rejection.rule == "unreadable_audio", (name, rejection)
        assert detail.lower() in rejection.detail.lower(), (name, rejection.detail)


def test_a_codec_failing_on_one_utterance_quarantines_it_and_keeps_the_rest(prepared_in_process, monkeypatch):
    cfg, _, _ = prepared_in_process
    codec = load_codec(cfg.codec, f"{cfg.run_dir}/codec")
    rows = pq.read_table(f"{cfg.run_dir}/data/train").to_pylist()[:3]
    manifest = [
        {k: r[k] for k in ("utt_id", "speaker", "split", "source", "text", "audio_path", "phones", "phone_ms")}
        for r in rows
    ]
    encode = codec.encode

    def fails_on_the_second(wav, sr):
        if len(wav) == len(load_checked_audio(rows[1]["audio_path"], sr, cfg.prepare)[0]):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return encode(wav, sr)

    monkeypatch.setattr(codec, "encode", fails_on_the_second)
    out = tokenize_rows(manifest, codec, cfg.prepare, cfg.corpus.phonemes).to_pylist()
    assert [r["status"] for r in out] == ["ok", "quarantined", "ok"]
    assert out[1]["rule"] == "codec_failed" and "illegal memory access" in out[1]["detail"]
    assert out[0]["codes_0"] is not None and out[2]["phonemes"]
    assert "codec_failed" in RULES


def _chapter(root, speaker="11", chapter="22"):
    d = root / speaker / chapter
    d.mkdir(parents=True)
    return d


def test_a_transcript_file_that_is_not_text_is_one_quarantine_entry_naming_it(tmp_path):
    good = _chapter(tmp_path)
    sf.write(good / "11-22-0000.flac", np.zeros(1600, np.float32), 16000)
    (good / "11-22.trans.txt").write_text("11-22-0000 HELLO THERE\n")
    (good / "._11-22-0000.flac").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # an AppleDouble resource fork
    (good / ".DS_Store").write_bytes(bytes(64))
    binary = _chapter(tmp_path, "33", "44")
    (binary / "33-44.trans.txt").write_bytes(bytes(range(256)) * 40)  # 10 kB of binary, 40 "lines"
    utts = read_librispeech(tmp_path)
    assert [u.utt_id for u in utts] == ["11-22-0000", "33-44.trans.txt"]
    bad = utts[1]
    assert bad.rule == "unreadable_transcript" and bad.audio_path.endswith("33/44/33-44.trans.txt")
    assert "is not UTF-8 text" in bad.detail


def test_vctk_names_a_binary_transcript_of_one_utterance(tmp_path):
    (tmp_path / "txt" / "p225").mkdir(parents=True)
    (tmp_path / "txt" / "p225" / "p225_001.txt").write_text("Please call Stella.")
    (tmp_path / "txt" / "p225" / "p225_002.txt").write_bytes(b"ok\x00\x00\x00")
    utts = {u.utt_id: u for u in read_vctk(tmp_path)}
    assert utts["p225_001"].rule is None and utts["p225_001"].text == "Please call Stella."
    assert utts["p225_002"].rule == "unreadable_transcript" and "NUL bytes" in utts["p225_002"].detail
