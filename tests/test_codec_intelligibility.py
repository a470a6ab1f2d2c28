"""The offline codec's round trip stays intelligible: offline-ASR WER on held-out audio above a floor."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sa_ray.audio import read_wav
from sa_ray.codec.mel_kmeans import MelKMeansCodec
from sa_ray.metrics.asr import domain_asr
from sa_ray.metrics.wer import wer

pytestmark = pytest.mark.slow


def test_offline_codec_round_trip_is_intelligible(prepared_tiny):
    cfg, _, _ = prepared_tiny
    data = Path(cfg.run_dir) / "data"
    train = pq.read_table(data / "train", columns=["audio_path"]).to_pylist()
    held = pq.read_table(data / "heldout_sentences", columns=["text", "audio_path"]).to_pylist()[:8]
    codec = MelKMeansCodec.fit(
        (read_wav(r["audio_path"]) for r in train), n_codebooks=4, codebook_size=128, stack=2, seed=0
    )
    asr = domain_asr(data, cfg.corpus)  # an LM of the grammar's sentences, held-out ones excluded
    refs = [r["text"] for r in held]
    original = wer(refs, [asr.transcribe(*read_wav(r["audio_path"])) for r in held])
    round_trip = wer(
        refs, [asr.transcribe(codec.decode(codec.encode(*read_wav(r["audio_path"]))), codec.sample_rate) for r in held]
    )
    print(f"WER original {original:.3f}, round trip {round_trip:.3f} ({asr.backend}, {len(held)} utterances)")
    assert original < 0.4
    assert round_trip < 0.6 and round_trip < original + 0.4
