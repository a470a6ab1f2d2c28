"""An adapter names the base it was trained on (sa_ray.lineage): a different base, or none named, is refused; the
champion alias moves only for a version that beats the base, and the champion, beyond the noise."""

from __future__ import annotations

import shutil

import pytest

from sa_ray import lineage


def _base(root, weights: bytes = b"w" * 100):
    for sub in ("ar", "nar"):
        (root / sub).mkdir(parents=True)
        (root / sub / "model.safetensors").write_bytes(weights)
        (root / sub / "config.json").write_text("{}")
    return root


def test_the_fingerprint_names_the_weights_and_the_codec(tmp_path):
    base, codec = _base(tmp_path / "base"), tmp_path / "codec"
    codec.mkdir()
    (codec / "codebooks.safetensors").write_bytes(b"c" * 10)
    fp = lineage.fingerprint(base, codec, "mel_kmeans")
    assert fp == lineage.fingerprint(shutil.copytree(base, tmp_path / "copy"), codec, "mel_kmeans")  # content, not path
    assert fp != lineage.fingerprint(_base(tmp_path / "other", b"x" * 100), codec, "mel_kmeans")
    (codec / "codebooks.safetensors").write_bytes(b"d" * 10)
    assert fp != lineage.fingerprint(base, codec, "mel_kmeans")  # the same model speaking other codes
    assert lineage.fingerprint(base, tmp_path / "none", "encodec") != lineage.fingerprint(
        base, tmp_path / "none", "mimi"
    )


def test_an_adapter_is_used_on_its_own_base_only(tmp_path):
    adapter = tmp_path / "v1"
    adapter.mkdir()
    with pytest.raises(lineage.LineageError, match="carries no lineage.json"):
        lineage.check(adapter, "aaaa", "/bases/base")
    lineage.write(adapter, {"base_fingerprint": "aaaa", "base_dir": "/bases/base", "config": "tiny"})
    assert lineage.check(adapter, "aaaa", "/bases/base")["config"] == "tiny"
    with pytest.raises(lineage.LineageError) as err:
        lineage.check(adapter, "bbbb", "/bases/base-big", "models:/tiny-policy@latest")
    assert "models:/tiny-policy@latest was trained on base aaaa (/bases/base)" in str(err.value)
    assert "bbbb (/bases/base-big)" in str(err.value)


def _record(wer, change, lo, hi):
    return {
        "heldout_sentences_wer": wer,
        "heldout_sentences_wer_change": change,
        "heldout_sentences_wer_change_lo": lo,
        "heldout_sentences_wer_change_hi": hi,
    }


def test_the_champion_moves_only_beyond_the_noise():
    worse = _record(0.50, +0.05, -0.01, +0.11)  # the demo's version 3: worse than the base
    noisy = _record(0.44, -0.01, -0.07, +0.05)
    better = _record(0.40, -0.05, -0.09, -0.01)
    assert not lineage.beats(worse, None, None)[0] and "within the noise" in lineage.beats(noisy, None, None)[1]
    assert lineage.beats(better, None, None) == (True, "it beats the base beyond noise (-0.050, interval below zero)")
    held = {"heldout_sentences_wer": 0.41}
    # evaluated by the same run: paired against the champion
    assert not lineage.beats(better, held, _record(0.40, -0.01, -0.04, +0.02))[0]
    assert lineage.beats(better, held, _record(0.40, -0.03, -0.05, -0.01))[0]
    # a champion of another run: a lower WER besides beating the base beyond noise
    assert lineage.beats(better, held, None)[0] and not lineage.beats(better, {"heldout_sentences_wer": 0.39}, None)[0]
    assert not lineage.beats({"heldout_sentences_wer": 0.4}, None, None)[0]  # no paired change: never promoted
