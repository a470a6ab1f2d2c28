"""Length and entropy guards of the align loop: what every iteration's rollouts say about the policy's health.

A preference learner can widen its margins by changing how long the policy speaks (the length exploit of DPO on
summed logprobs: the rejected sample's logprob falls with its length) or by sharpening or flattening its
distribution. Two numbers of each iteration's rollouts, before any pair is made, watch for both:
- `rollout_duration_ratio`: generated frames / golden frames of the same prompt, averaged over samples (the
  evaluation's `duration_ratio`, on the rollouts). A version whose ratio leaves `DURATION_BAND` or moves more than
  `MAX_CHANGE` from the previous iteration's is flagged (`length_exploit`).
- `rollout_nll_per_token`: the mean -log p of the sampled tokens under the policy's own (full-vocabulary,
  temperature-1) distribution. Sampled at temperature 1 without top-k/top-p it is a Monte Carlo estimate of the
  policy's per-token entropy; under other sampling settings it is what it says. Both engines return each sampled
  token's logprob as they sample (`generate(return_logprobs=True)`: the raw full-vocabulary log-softmax, before the
  allowed ids, forced phones, temperature, top-k and top-p: the torch sampler gathers it from the step's logits, vLLM
  reports it as its `raw_logprobs`), so it costs no second pass over the samples.
"""

from __future__ import annotations

from sa_ray.models.vocab import EOS, Vocab

DURATION_BAND = (0.8, 1.25)  # rollout duration ratios outside it are flagged
MAX_CHANGE = 0.15  # nor may the ratio move by more than this fraction of the previous iteration's


def frames(target_ids, vocab: Vocab) -> int:
    """The code frames of a target, up to its EOS."""
    n = 0
    for token in target_ids:
        if token == EOS:
            break
        n += vocab.code_offset <= token < vocab.size
    return n


def duration_ratio(sample_ids, golden_ids, vocab: Vocab) -> float:
    """Frames the sample generated / frames of the golden target of its prompt."""
    return frames(sample_ids, vocab) / max(1, frames(golden_ids, vocab))


class RolloutGuards:
    """Running sums of one policy version's rollouts (the rollout engine holds one, reset per version)."""

    def __init__(self) -> None:
        self.samples, self.ratio_sum, self.nll_sum, self.nll_tokens = 0, 0.0, 0.0, 0

    def add(self, sample_ids, golden_ids, vocab: Vocab, logprob: float | None = None, scored: int = 0) -> None:
        """One sample: its duration against its golden target's, and the summed logprob of its `scored` tokens
        (the rollout engine: all of them; an empty sample, or no logprob, adds nothing to the NLL)."""
        self.samples += 1
        self.ratio_sum += duration_ratio(sample_ids, golden_ids, vocab)
        if logprob is not None and scored:
            self.nll_sum -= logprob
            self.nll_tokens += scored

    def __add__(self, other: RolloutGuards) -> RolloutGuards:
        """Both sums: the guards of a version whose rollouts several engine replicas sampled."""
        out = RolloutGuards()
        for name in vars(out):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def stats(self) -> dict[str, float]:
        out = {}
        if self.samples:
            out["rollout_duration_ratio"] = self.ratio_sum / self.samples
        if self.nll_tokens:
            out["rollout_nll_per_token"] = self.nll_sum / self.nll_tokens
        return out


def length_exploit(ratio: float | None, previous: float | None = None) -> str | None:
    """Why a version's rollout duration ratio looks like a length exploit (None: it does not, or is unknown): outside
    `DURATION_BAND`, or more than `MAX_CHANGE` away from the previous iteration's ratio."""
    if ratio is None:
        return None
    low, high = DURATION_BAND
    reasons = []
    if not low <= ratio <= high:
        reasons.append(f"duration ratio {ratio:.3f} outside [{low}, {high}]")
    if previous and abs(ratio / previous - 1) > MAX_CHANGE:
        reasons.append(f"duration ratio {ratio:.3f} moved {ratio / previous - 1:+.0%} from {previous:.3f}")
    return "; ".join(reasons) or None
