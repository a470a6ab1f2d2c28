"""align.pairs=corrections: the first wrong content decision of a sample, and the pair set made of them."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sa_ray.config import AlignConfig, ConfigError
from sa_ray.corrections import Decision, final_phone_frames, first_wrong_decision
from sa_ray.models.vocab import EOS, Vocab
from sa_ray.preference import commit_pairs, correction_pairs

VOCAB = Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=True)
A, B, C, D = VOCAB.text_ids(["a", "b", "c", "d"])  # 5..8


def f(code: int) -> int:
    """A frame token."""
    return VOCAB.code_offset + code


ASKED = [A, B, C]


@pytest.mark.parametrize(
    "tokens, expected",
    [
        # said everything, in order, then stopped: nothing to correct (frames never count)
        ([A, f(0), f(1), B, f(2), C, f(3), f(3), EOS], None),
        ([A, B, C, f(1), EOS], None),  # phones of no frames are in the layout too
        ([f(5), A, f(0), B, f(1), C, f(2), EOS], None),
        # a phone where the next asked one was due: skipped b, inserted d, substituted d for b, repeated a
        ([A, f(0), C, f(1), EOS], Decision(2, B, C, "phone")),
        ([A, f(0), D, f(1), B, f(2), C, f(3), EOS], Decision(2, B, D, "phone")),
        ([A, f(0), D, f(1), C, f(2), EOS], Decision(2, B, D, "phone")),
        ([A, f(0), A, f(0), B, f(1), C, EOS], Decision(2, B, A, "phone")),
        ([B, f(0), C, EOS], Decision(0, A, B, "phone")),
        # EOS while phones are due
        ([A, f(0), B, f(1), EOS], Decision(4, C, EOS, "early_eos")),
        ([EOS], Decision(0, A, EOS, "early_eos")),
        # a phone after the last asked one, instead of EOS
        ([A, f(0), B, f(1), C, f(2), D, f(3), EOS], Decision(6, EOS, D, "extra_phone")),
        ([A, f(0), B, f(1), C, f(2), C, f(2)], Decision(6, EOS, C, "extra_phone")),
        # the first wrong decision only: what follows is conditioned on it
        ([A, C, EOS], Decision(1, B, C, "phone")),
    ],
)
def test_the_first_wrong_decision_of_a_sample(tokens, expected):
    assert first_wrong_decision(tokens, ASKED, VOCAB, max_final_frames=2) == expected


def test_a_missing_eos_is_due_after_the_last_phones_allowance():
    rambling = [A, f(0), B, f(1), C, f(2), f(3), f(4), f(5), f(6)]  # no EOS: the budget ran out
    # the last phone (position 4) may take 2 frames: the third (position 7) should have been EOS
    assert first_wrong_decision(rambling, ASKED, VOCAB, max_final_frames=2) == Decision(7, EOS, f(4), "missing_eos")
    assert first_wrong_decision(rambling, ASKED, VOCAB, max_final_frames=0) == Decision(5, EOS, f(2), "missing_eos")
    assert first_wrong_decision(rambling, ASKED, VOCAB, max_final_frames=5) is None  # still within its allowance
    assert first_wrong_decision(rambling, ASKED, VOCAB) is None  # no allowance given: no place to put EOS
    # a long last phone that did end said what it was asked to; a sample cut before its last phone was slow, not wrong
    assert first_wrong_decision([*rambling, EOS], ASKED, VOCAB, max_final_frames=2) is None
    assert first_wrong_decision([A, f(0), B, f(1), f(1), f(1)], ASKED, VOCAB, max_final_frames=2) is None


def test_corrections_need_phones_in_the_target():
    plain = Vocab(("a",), codebook_size=8, aligned=False)
    with pytest.raises(ValueError, match="aligned vocabulary"):
        first_wrong_decision([plain.code_offset, EOS], [5], plain)
    assert final_phone_frames([A, f(0), B, f(1), f(2), f(3), EOS, f(4)], VOCAB) == 3


def _sample(utt: str, k: int, text: list[int], sample: list[int], golden: list[int]) -> dict:
    """A rollout row as the engine returns it (the request's fields + sample_ids)."""
    return {
        "iteration": 1,
        "utt_id": utt,
        "sample_idx": k,
        "speaker": "s",
        "text": "t",
        "audio_path": "a.wav",
        "prompt_ids": VOCAB.prompt(text, [0, 1]),
        "chosen_ids": golden,
        "budget": 40,
        "seed": 7,
        "sample_ids": sample,
        "sample_ended": bool(sample) and sample[-1] == EOS,
        "policy_version": 1,
    }


def test_correction_pairs_land_in_the_pair_set(tmp_path):
    """The pair builder's rows through the pipeline's batch function, written and committed as the loop does."""
    from actors.pipeline import PAIR_COLUMNS, _corrections

    golden = [A, f(0), B, f(1), C, f(2), f(2), EOS]  # the last phone: 2 frames, so a missing EOS is due after 4
    samples = [
        _sample("u1", 0, ASKED, [A, f(0), B, f(1), C, f(2), EOS], golden),  # right: no pair
        _sample("u1", 1, ASKED, [A, f(0), C, f(1), EOS], golden),  # skipped b
        _sample("u2", 0, [A, B], [A, f(0), B, *[f(3)] * 6], [A, f(0), B, f(1), EOS]),  # rambles on after b
        _sample("u2", 1, [A, B], [A, f(0), EOS], [A, f(0), B, f(1), EOS]),  # stops before b
    ]
    assert [p["sample_idx"] for p in correction_pairs(samples, VOCAB)] == [1, 0, 1]
    table = _corrections(pd.DataFrame(samples), VOCAB)
    staging = tmp_path / ".staging"
    staging.mkdir()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), staging / "part-0.parquet")
    manifest = commit_pairs(staging, tmp_path / "iter_1", {"strategy": "corrections"})
    rows = pq.read_table(tmp_path / "iter_1").to_pylist()
    assert set(PAIR_COLUMNS) <= set(rows[0]) and len(rows) == 3
    by_key = {(r["utt_id"], r["sample_idx"]): r for r in rows}
    skipped, rambling, early = by_key["u1", 1], by_key["u2", 0], by_key["u2", 1]
    prompt = VOCAB.prompt(ASKED, [0, 1])
    assert skipped["prompt_ids"] == [*prompt, A, f(0)] and skipped["chosen_ids"] == [B]
    assert skipped["rejected_ids"] == [C] and (skipped["error_kind"], skipped["error_position"]) == ("phone", 2)
    # u2's golden b has 1 frame: the sample's b may take 2, so its third frame (position 5) is where EOS was due
    assert rambling["prompt_ids"] == [*VOCAB.prompt([A, B], [0, 1]), A, f(0), B, f(3), f(3)]
    assert (rambling["chosen_ids"], rambling["rejected_ids"], rambling["error_kind"]) == ([EOS], [f(3)], "missing_eos")
    assert (early["chosen_ids"], early["rejected_ids"], early["error_kind"]) == ([B], [EOS], "early_eos")
    assert manifest["pairs"] == 3 and manifest["error_kinds"] == {"early_eos": 1, "missing_eos": 1, "phone": 1}
    assert json.loads((tmp_path / "iter_1" / "_manifest.json").read_text())["strategy"] == "corrections"


def test_corrections_settings_are_checked():
    AlignConfig(pairs="corrections").validate()
    AlignConfig(pairs="corrections", samples_per_prompt=4, method="sft").validate()
    AlignConfig(pairs="corrections").check_model(aligned=True)
    for options, message in (
        (dict(margin_tokens="phones"), "align.margin_tokens=phones would count other tokens"),
        (dict(forced_phones=True), "align.forced_phones=true with align.pairs=corrections"),
        (dict(nll_target="golden"), "align.nll_target=golden: a correction's prompt"),
    ):
        with pytest.raises(ConfigError, match=message):
            AlignConfig(pairs="corrections", **options).validate()
    with pytest.raises(ConfigError, match="align.pairs=corrections needs a model whose targets write their phones"):
        AlignConfig(pairs="corrections").check_model(aligned=False)
    with pytest.raises(ConfigError, match="align.pairs must be golden, ranked, corrections, votes"):
        AlignConfig(pairs="fixes").validate()
