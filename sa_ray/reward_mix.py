"""`align.reward` as a weighted sum of named terms, e.g. `phones+0.5*sim-0.5*wer` or `0.7*phones+0.3*model`.

A plain name is the term with weight 1. Each term is written to its own column by its stage of the pipeline
(`actors/pipeline.py`); one mixing stage then writes `reward`, the weighted sum, which is all that ranked pairs,
GRPO and PPO read. No heavy imports here: the config validates `align.reward` with `reward_terms`.
"""

from __future__ import annotations

import functools
import math
import operator
import re

# term -> the role whose stage computes it (None: the pipeline itself, for free)
TERMS = {
    "asr": "scorers",  # SIM - WER of the sample's speech, from the RewardScorers' two columns
    "wer": "scorers",  # the WER alone: an error rate, so it takes a negative weight
    "sim": "scorers",  # the SIM alone
    "phones": None,  # minus the phone error rate of the target the sample wrote
    "model": "reward_model",  # the trained reward model's score
}
# the column each term's stage writes (asr is read from wer's and sim's)
COLUMNS = {"wer": "sample_wer", "sim": "sample_sim", "phones": "reward_phones", "model": "reward_model"}
EXAMPLE = "phones+0.5*sim-0.5*wer"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# one term: an optional sign (required after the first term), an optional `weight*`, a name
_TERM = re.compile(rf"(?P<sign>[+-]?)(?:(?P<weight>{_NUMBER})\*)?(?P<name>[A-Za-z_]\w*)")


def reward_terms(spec: str) -> dict[str, float]:
    """`spec` -> {term: weight}, in the order given; ValueError (the rule and the bad term) when it does not parse."""
    # spaces around the operators are fine; spaces inside a term are not (`pho nes` is no term)
    text = re.sub(r"\s*([+*-])\s*", r"\1", spec.strip())
    if not text:
        raise ValueError(f"it is empty: name a term ({', '.join(TERMS)})")
    terms: dict[str, float] = {}
    pos = 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if m is None or (pos > 0 and not m["sign"]) or (m.end() < len(text) and text[m.end()] not in "+-"):
            raise ValueError(f"cannot read {text[pos:]!r}: a term is [weight*]name, joined by + or -")
        name, weight = m["name"], float(m["weight"] or 1.0) * (-1.0 if m["sign"] == "-" else 1.0)
        if not math.isfinite(weight):
            raise ValueError(f"{name}'s weight {m['weight']} is not a finite number")
        if name not in TERMS:
            raise ValueError(f"unknown term {name!r} (terms: {', '.join(TERMS)})")
        if name in terms:
            raise ValueError(f"{name} is named twice: give each term once, with its whole weight")
        if weight == 0:
            raise ValueError(f"{name} has weight 0: leave it out (its stage would still run)")
        if name == "wer" and weight > 0:
            raise ValueError("wer is an error rate (higher is worse): give it a negative weight, e.g. -0.5*wer")
        terms[name] = weight
        pos = m.end()
    return terms


def reward_roles(terms: dict[str, float]) -> set[str]:
    """The roles the terms need: `scorers` (asr, wer, sim), `reward_model` (model)."""
    return {TERMS[name] for name in terms} - {None}


def term_values(batch, name: str):
    """One term's per-sample values: a column of `batch` (a DataFrame, or any mapping of column -> array)."""
    if name == "asr":
        return batch["sample_sim"] - batch["sample_wer"]
    return batch[COLUMNS[name]]


def mixed_reward(batch, terms: dict[str, float]):
    """Per sample, the terms' weighted sum. Summed from the first term (not from 0), so that a plain name's reward
    is its column exactly, -0.0 included."""
    return functools.reduce(operator.add, (weight * term_values(batch, name) for name, weight in terms.items()))
