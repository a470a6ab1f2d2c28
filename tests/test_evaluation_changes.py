"""benchmarks.evaluation_changes: evaluate --out files compared with the first, paired by sample."""

from __future__ import annotations

import json

import pytest

from benchmarks.evaluation_changes import main

PROTOCOL = {"asr": "pocketsphinx", "temperature": 1.0, "top_k": 0, "forced_phones": True}


def _evaluation(path, errors, words, protocol=PROTOCOL):
    e = {"protocol": protocol}
    for split in ("heldout_sentences", "heldout_voices"):
        e.update({f"{split}_utt_errors": errors, f"{split}_utt_words": words, f"{split}_wer": sum(errors) / sum(words),
                  f"{split}_sim": 0.8, f"{split}_phone_error_rate": 0.0})
    path.write_text(json.dumps(e))
    return str(path)


def test_changes_against_the_first_file_with_intervals(tmp_path, capsys):
    words = [10] * 40
    base = _evaluation(tmp_path / "base.json", [3] * 40, words)
    worse = _evaluation(tmp_path / "worse.json", [5] * 40, words)
    same = _evaluation(tmp_path / "same.json", [3] * 40, words)
    rows = main([base, worse, same])
    assert rows[1]["heldout_sentences_wer_change"] == pytest.approx(0.2)
    assert rows[1]["heldout_sentences_wer_change_lo"] == pytest.approx(0.2)  # every utterance moved alike
    assert rows[2]["heldout_voices_wer_change"] == 0 and "(change" not in capsys.readouterr().out.splitlines()[0]
    free = _evaluation(tmp_path / "free.json", [3] * 40, words, {**PROTOCOL, "forced_phones": False})
    with pytest.raises(SystemExit, match="not comparable"):
        main([base, free])
    short = _evaluation(tmp_path / "short.json", [3] * 20, words[:20])
    with pytest.raises(SystemExit, match="not the same held-out samples"):
        main([base, short])
