"""benchmarks.pooled_changes: an align run's versions pooled with evaluations at other seeds, paired by seed."""

import json

import pytest

from benchmarks.pooled_changes import main, pooled
from sa_ray.align_run import AlignRun


def _eval(errors: list[int], **extra) -> dict:
    return {"heldout_sentences_wer": sum(errors) / (4 * len(errors)), "heldout_sentences_sim": 0.8,
            "heldout_sentences_utt_errors": errors, "heldout_sentences_utt_words": [4] * len(errors), **extra}


def test_versions_pool_over_their_seeds_and_pair_with_the_base_at_the_same_seeds(tmp_path):
    run = AlignRun(tmp_path / "run")
    run.save_record(0, {"iteration": 0, **_eval([2, 2])})
    run.save_record(1, {"iteration": 1, **_eval([1, 1])})
    files = []
    for name, adapter, errors in (("v0", None, [4, 4]), ("v1", str(tmp_path / "run/align/adapters/v1"), [3, 3])):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"adapter": adapter, "seed": 1000, "eval_seeds": 1, **_eval(errors)}))
    rows = pooled(tmp_path / "run", files)
    assert [r["version"] for r in rows] == [0, 1] and rows[1]["seeds"] == [0, 1000]
    assert rows[0]["heldout_sentences_wer"] == pytest.approx((0.5 + 1.0) / 2)
    assert rows[0]["heldout_sentences_wer_spread"] == pytest.approx(0.25)
    assert rows[1]["heldout_sentences_wer_change"] == pytest.approx((8 - 12) / 16)
    main(["--run", str(tmp_path / "run"), "--extra", *map(str, files), "--plot-dir", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "run-wer-change.png").read_bytes()[:4] == b"\x89PNG"

    with pytest.raises(FileNotFoundError, match="no align run"):
        pooled(tmp_path / "not-a-run", files)
    # a version at a seed the base was not evaluated at cannot be paired: said, not guessed
    files[0].unlink()
    with pytest.raises(ValueError, match="seeds"):
        pooled(tmp_path / "run", files[1:])
