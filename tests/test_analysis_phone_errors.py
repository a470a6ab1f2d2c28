"""analysis.phone_errors --compare: two runs' share of samples with any phone error, paired by sentence."""

import json

import pytest

from analysis.phone_errors import compare_runs, main

SENTENCES = ["s1", "s1", "s2"]  # one seed's samples: two voices of sentence s1, one of s2


def _run(adapter, edits_by_seed, sentences=True):
    return [
        {
            "adapter": adapter,
            "seed": seed,
            "heldout_sentences_utt_phone_errors": edits,
            **({"heldout_sentences_utt_sentences": SENTENCES} if sentences else {}),
        }
        for seed, edits in edits_by_seed.items()
    ]


# by hand, per sentence over both seeds (any phone error = 1):
#   A: s1 [0, 1, 1, 0] -> 2 of 4, s2 [1, 0] -> 1 of 2: 3/6      B: s1 [0, 0, 1, 0] -> 1 of 4, s2 [1, 0]: 2/6
# change -1/6; a draw of two sentences: s1 twice -2/8 = -1/4, s2 twice 0/4 = 0 (each p = 1/4 > 2.5%: the ends)
A = {0: [0, 2, 1], 1000: [3, 0, 0]}
B = {0: [0, 0, 1], 1000: [5, 0, 0]}


def test_compare_pairs_two_runs_by_sentence():
    (got,) = compare_runs(_run("base", A), _run("base", B))
    assert (got["split"], got["n"], got["clusters"]) == ("heldout_sentences", 6, 2)
    assert (got["base_share"], got["share"]) == (pytest.approx(3 / 6), pytest.approx(2 / 6))
    assert got["change"] == pytest.approx(-1 / 6)
    assert (got["change_lo"], got["change_hi"]) == (pytest.approx(-1 / 4), pytest.approx(0.0))
    with pytest.raises(ValueError, match="not the same sentences"):
        compare_runs(_run("base", A, False), _run("base", B, False))
    with pytest.raises(ValueError, match="different seeds"):
        compare_runs(_run("base", A), _run("base", {0: B[0], 2000: B[1000]}))
    other = _run("base", B)
    other[1]["heldout_sentences_utt_sentences"] = ["s2", "s1", "s1"]
    with pytest.raises(ValueError, match="not the same sentences"):
        compare_runs(_run("base", A), other)


def test_compare_cli_prints_the_change_in_points(tmp_path, capsys):
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(files, (_run("base", A) + _run("v1", A), _run("base", B) + _run("v1", A))):
        path.write_text(json.dumps(run))
    base, v1 = main(["--compare", *map(str, files)])
    assert (base["policy"], v1["policy"]) == ("base", "v1") and v1["change"] == v1["change_lo"] == 0.0
    lines = capsys.readouterr().out.splitlines()
    assert "50.0% -> 33.3%, -16.7 points [-25.0, +0.0] (95%, bootstrap over 2 sentences, 6 samples" in lines[0]
    with pytest.raises(SystemExit):
        main(["--compare", str(files[0])])  # two files needed
