"""On-policy corrections: the FIRST wrong content decision of a sample of an aligned AR model (`align.pairs=corrections`).

In the aligned layout (`sa_ray.models.vocab`) a target reads `p1 c c c p2 c c ... pN c c EOS`: the model decides
WHAT it says at every phone token and at EOS, and how it sounds at every frame. Reading a sample left to right
against the phones it was asked to say, the first decision that departs from them is where it went wrong; what it
wrote after that is conditioned on the mistake. A correction pair puts the preference margin on that one decision:
prompt = the AR prompt + the sample up to it, chosen = the right token, rejected = the token the sample wrote. The
sample's right decisions before it are in the prompt, so they are neither pushed down (as a whole-sequence
rejected would) nor up.

The wrong decisions (`Decision.kind`), with j asked phones written right so far:
- `phone`: a phone token other than the (j+1)-th asked phone while one is still due: the first sign of a
  skipped, inserted, repeated or substituted phone (which of them is only visible later; the fix is the same:
  write the phone that is due). chosen = the due phone.
- `early_eos`: EOS while asked phones are still due. chosen = the due phone.
- `extra_phone`: a phone after the last asked phone was written. chosen = EOS.
- `missing_eos`: no EOS at all (the sample ran out of budget) after all phones were written right, and the last
  phone went on for more than `max_final_frames` frames: the frame right after those is rejected, chosen = EOS.
  Frames after the last phone are its own frames, so EOS is not due right after it; how many frames the last
  phone may take is the caller's call (the pair builder: twice the golden target's last phone). A sample that
  ends with EOS after a long last phone said what it was asked to: no pair.
Frames are never wrong content. A sample cut by its budget before its last phone, without a wrong phone, gave
no wrong decision (it was slow, not wrong): no pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa_ray.models.vocab import EOS, Vocab

FINAL_FRAMES_FACTOR = 2  # missing EOS: the last phone may last this many times its golden frames before EOS is due


@dataclass(frozen=True)
class Decision:
    position: int  # index into the sample's target tokens of the wrong decision
    chosen: int  # the token that was due there
    rejected: int  # the token the sample wrote there
    kind: str  # phone | early_eos | extra_phone | missing_eos


def first_wrong_decision(
    ar_tokens: list[int], asked: list[int], vocab: Vocab, max_final_frames: int | None = None
) -> Decision | None:
    """The first wrong content decision of an aligned sample's target tokens `ar_tokens` (after [SPEECH]) asked to
    say the phone ids `asked`; None when it said them all, in order, and stopped (see the module's docstring)."""
    if not vocab.aligned:
        raise ValueError("corrections need an aligned vocabulary (targets that write their phones)")
    asked = [int(p) for p in asked]
    done, last_phone = 0, None  # asked phones written right so far; the position of the last one
    for pos, token in enumerate(int(t) for t in ar_tokens):
        if token == EOS:
            return None if done == len(asked) else Decision(pos, asked[done], EOS, "early_eos")
        if vocab.text_offset <= token < vocab.code_offset:  # a phone
            if done == len(asked):
                return Decision(pos, EOS, token, "extra_phone")
            if token != asked[done]:
                return Decision(pos, asked[done], token, "phone")
            done, last_phone = done + 1, pos
    # no EOS: the budget ran out
    if done < len(asked) or last_phone is None or max_final_frames is None:
        return None
    due = last_phone + 1 + max(int(max_final_frames), 0)
    return Decision(due, EOS, int(ar_tokens[due]), "missing_eos") if due < len(ar_tokens) else None


def final_phone_frames(target: list[int], vocab: Vocab) -> int:
    """The frames of a target's last phone (codes after its last phone token, before EOS)."""
    n = 0
    for token in target:
        if token == EOS:
            break
        if vocab.text_offset <= token < vocab.code_offset:
            n = 0
        elif vocab.code_offset <= token < vocab.size:
            n += 1
    return n
