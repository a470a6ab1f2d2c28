"""analysis.wer_changes: WER changes against the base, paired by sample - evaluate --out files side by side,
and an align run's versions pooled with evaluations at other seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.wer_changes import main, pooled
from sa_ray.align_run import AlignRun

PROTOCOL = {"asr": "pocketsphinx", "temperature": 1.0, "top_k": 0, "forced_phones": True}


def _evaluation(path, errors, words, protocol=PROTOCOL):
    e = {"protocol": protocol}
    for split in ("heldout_sentences", "heldout_voices"):
        e.update(
            {
                f"{split}_utt_errors": errors,
                f"{split}_utt_words": words,
                f"{split}_wer": sum(errors) / sum(words),
                f"{split}_sim": 0.8,
                f"{split}_phone_error_rate": 0.0,
            }
        )
    path.write_text(json.dumps(e))
    return str(path)


def test_files_side_by_side_change_against_the_first_with_intervals(tmp_path, capsys):
    words = [10] * 40
    base = _evaluation(tmp_path / "base.json", [3] * 40, words)
    worse = _evaluation(tmp_path / "worse.json", [5] * 40, words)
    same = _evaluation(tmp_path / "same.json", [3] * 40, words)
    rows = main([base, worse, same])
    assert rows[1]["heldout_sentences_wer_change"] == pytest.approx(0.2)
    assert rows[1]["heldout_sentences_wer_change_lo"] == pytest.approx(0.2)  # every utterance moved alike
    assert rows[2]["heldout_voices_wer_change"] == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{base}:  sentences: WER 0.300 SIM 0.800 PER 0.000;  voice: WER 0.300 SIM 0.800 PER 0.000",
        f"{worse}:  sentences: WER 0.500 SIM 0.800 PER 0.000 (change +0.200 [+0.200, +0.200] MDE 0.000);  "
        "voice: WER 0.500 SIM 0.800 PER 0.000 (change +0.200 [+0.200, +0.200] MDE 0.000)",
        f"{same}:  sentences: WER 0.300 SIM 0.800 PER 0.000 (change +0.000 [+0.000, +0.000] MDE 0.000);  "
        "voice: WER 0.300 SIM 0.800 PER 0.000 (change +0.000 [+0.000, +0.000] MDE 0.000)",
    ]
    free = _evaluation(tmp_path / "free.json", [3] * 40, words, {**PROTOCOL, "forced_phones": False})
    with pytest.raises(SystemExit, match="not comparable"):
        main([base, free])
    guided = _evaluation(tmp_path / "guided.json", [4] * 40, words, {**PROTOCOL, "temperature": 0.4, "cfg_scale": 2.0})
    assert main([base, guided])[1]["heldout_sentences_wer_change"] == pytest.approx(0.1)  # another decoding: compared
    short = _evaluation(tmp_path / "short.json", [3] * 20, words[:20])
    with pytest.raises(SystemExit, match="not the same held-out samples"):
        main([base, short])
    # files that record their samples' sentences: resampled by sentence, and refused when the sentences differ
    said = [f"sentence {i % 10}" for i in range(40)]  # ten sentences, four samples each

    def saying(path, sentences, out):
        e = json.loads(Path(path).read_text())
        e.update({f"{split}_utt_sentences": sentences for split in ("heldout_sentences", "heldout_voices")})
        (tmp_path / out).write_text(json.dumps(e))
        return str(tmp_path / out)

    base, worse, other = (
        saying(base, said, "b.json"),
        saying(worse, said, "w.json"),
        saying(worse, said[::-1], "o.json"),
    )
    assert main([base, worse])[1]["heldout_sentences_wer_change_clusters"] == 10
    with pytest.raises(SystemExit, match="different sentences"):
        main([base, other])


def _eval(errors: list[int], **extra) -> dict:
    return {
        "heldout_sentences_wer": sum(errors) / (4 * len(errors)),
        "heldout_sentences_sim": 0.8,
        "heldout_sentences_utt_errors": errors,
        "heldout_sentences_utt_words": [4] * len(errors),
        **extra,
    }


def test_versions_pool_over_their_seeds_and_pair_with_the_base_at_the_same_seeds(tmp_path, capsys):
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
    capsys.readouterr()
    main(["--run", str(tmp_path / "run"), "--extra", *map(str, files), "--plot-dir", str(tmp_path / "plots")])
    assert (tmp_path / "plots" / "run-wer-change.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.splitlines() == [
        "version seeds        " + f"{'sentences':<50}",
        "      0 0,1000       WER 0.750±0.250 SIM 0.800",
        "      1 0,1000       WER 0.500±0.250 -0.250 [-0.250, -0.250] MDE 0.000 SIM 0.800",
    ]

    with pytest.raises(FileNotFoundError, match="no align run"):
        pooled(tmp_path / "not-a-run", files)
    # a version at a seed the base was not evaluated at cannot be paired: said, not guessed
    files[0].unlink()
    with pytest.raises(ValueError, match="seeds"):
        pooled(tmp_path / "run", files[1:])
    with pytest.raises(SystemExit, match="error: version 1 was evaluated at seeds"):
        main(["--run", str(tmp_path / "run"), "--extra", str(files[1])])


def test_one_use_at_a_time(tmp_path):
    base = _evaluation(tmp_path / "base.json", [3] * 4, [10] * 4)
    for argv in ([], [base, "--run", str(tmp_path)], [base, "--extra", base]):
        with pytest.raises(SystemExit):
            main(argv)
