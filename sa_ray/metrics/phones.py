"""Phone error rate of an aligned AR target: the phones the model wrote against the phones it was asked to say.

In the aligned layout (`sa_ray.models.vocab`) the AR model writes each phone token before the frames that
voice it, so a skipped, repeated or substituted phone is visible in the tokens themselves: a content
error measured without vocoder, recogniser or their noise. The worst of four samples by ASR WER and SIM
wrote 11.8% of their phones wrong, the best 3.2% (docs/align.md).
"""

from __future__ import annotations

import numpy as np

from sa_ray.models.vocab import EOS, Vocab


def _edit_table(a: list[int], b: list[int]) -> list[list[int]]:
    """Levenshtein table: [i][j] = edits (substitutions, insertions, deletions) between a[:i] and b[:j]."""
    table = [list(range(len(b) + 1))]
    for i, x in enumerate(a, 1):
        above, row = table[-1], [i]
        for j, y in enumerate(b, 1):
            row.append(min(above[j] + 1, row[j - 1] + 1, above[j - 1] + (x != y)))
        table.append(row)
    return table


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two token sequences."""
    return _edit_table(a, b)[-1][-1]


def _written(target_ids, vocab: Vocab) -> tuple[list[int], list[int], int | None]:
    """The text tokens of a generated target up to its EOS, their positions, and the EOS's (None: none)."""
    ids = np.asarray(target_ids, dtype=np.int64)
    stop = int(np.argmax(ids == EOS)) if (ids == EOS).any() else None
    where = np.flatnonzero(vocab.is_text(ids[:stop]))
    return ids[where].tolist(), where.tolist(), stop


def written_phones(target_ids, vocab: Vocab) -> list[int]:
    """The text tokens of a generated target, up to its EOS."""
    return _written(target_ids, vocab)[0]


def wrong_phone_positions(target_ids, text_ids: list[int], vocab: Vocab) -> list[int]:
    """Indices into `target_ids` of the decisions a minimal edit alignment of the written phones with
    `text_ids` calls wrong: a substituted or inserted phone token; for a skipped phone, the token written in
    its place (the next phone, or the EOS that came too early)."""
    written, where, stop = _written(target_ids, vocab)
    asked = list(text_ids)
    table = _edit_table(written, asked)
    wrong, i, j = set(), len(written), len(asked)
    while i or j:
        if i and j and table[i][j] == table[i - 1][j - 1] + (written[i - 1] != asked[j - 1]):
            if written[i - 1] != asked[j - 1]:
                wrong.add(where[i - 1])
            i, j = i - 1, j - 1
        elif i and table[i][j] == table[i - 1][j] + 1:
            wrong.add(where[i - 1])
            i -= 1
        else:  # asked[j - 1] skipped: what came instead is wrong
            instead = where[i] if i < len(written) else stop
            if instead is not None:
                wrong.add(instead)
            j -= 1
    return sorted(wrong)


def phone_errors(target_ids, text_ids: list[int], vocab: Vocab) -> int:
    """Phone edits between what an aligned target wrote and `text_ids` (the prompt's phones)."""
    if not vocab.aligned:
        raise ValueError("phone errors need an aligned vocabulary (targets that write their phones)")
    return edit_distance(written_phones(target_ids, vocab), list(text_ids))


def phone_error_rate(target_ids, text_ids: list[int], vocab: Vocab) -> float:
    """Phone edits per prompt phone: the reward of `align.reward=phones` is minus this."""
    return phone_errors(target_ids, text_ids, vocab) / len(text_ids)
