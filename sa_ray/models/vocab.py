"""The AR codec LM's one vocabulary and its sequence layout, in one place.

Token ids are laid out as   specials | text tokens | codec layer-0 codes:

    0 PAD   1 BOS   2 EOS   3 SEP (end of text)   4 SPEECH (start of the target)
    5 .. 5+T-1          text tokens: phones of the synthesiser (aligned corpora) or characters
    5+T .. 5+T+C-1      codec codes 0..C-1 of the first residual layer

A training sequence is  [BOS] text [SEP] prompt-codes [SPEECH] target [EOS]. Chain-of-Hindsight (`tag_prompt`) puts
a quality tag before [SPEECH]: [BOS] text [SEP] prompt-codes <tag> [SPEECH] target [EOS].
Its unconditional form (classifier-free guidance: `unconditional_prompt`) drops the text alone:
[BOS] [SEP] prompt-codes [SPEECH] target [EOS], the voice prompt and the target (phones included) unchanged.

The target takes one of two forms:
- aligned (corpora whose synthesiser reported phone durations): each phone token is followed by the
  codes of the frames it lasts, e.g. `p1 c c c p2 c c p3 c c c c`. The model writes the phones
  itself, so it learns durations while every frame sits right after the phone it voices; alignment,
  the bottleneck of a small codec LM trained from scratch, becomes a copy task. The phones inside
  the target also tell the NAR model which phone each frame belongs to. (In the spirit of ELLA-V's
  interleaved phone and acoustic tokens.)
- plain: the codes alone, for recorded corpora without alignments (VALL-E's layout).

Generation is restricted to text tokens + codes + EOS in aligned mode, codes + EOS in plain mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PAD, BOS, EOS, SEP, SPEECH = 0, 1, 2, 3, 4
IGNORE = -100  # label of positions that carry no loss (text, prompt, padding)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<speech>")
# Chain-of-Hindsight's quality tags (`sa_ray.coh`): special ids at a place they never stand otherwise (BOS only
# opens a sequence, SEP only closes its text), so a base model needs no new embedding rows
QUALITY_TAGS = {"good": BOS, "bad": SEP}


@dataclass(frozen=True)
class Vocab:
    text_tokens: tuple[str, ...]
    codebook_size: int
    aligned: bool  # targets interleave phone tokens with their frames

    @property
    def text_offset(self) -> int:
        return len(SPECIALS)

    @property
    def code_offset(self) -> int:
        return len(SPECIALS) + len(self.text_tokens)

    @property
    def size(self) -> int:
        return self.code_offset + self.codebook_size

    @property
    def text_id_range(self) -> range:
        """The ids of the text tokens (phones, in an aligned vocabulary): what forced decoding constrains."""
        return range(self.text_offset, self.code_offset)

    # ------------------------------------------------------------------------------------ mapping

    def text_ids(self, tokens: list[str]) -> list[int]:
        index = self._index()
        missing = sorted({t for t in tokens if t not in index})
        if missing:
            raise ValueError(f"text tokens not in the vocabulary: {missing[:10]}")
        return [index[t] for t in tokens]

    def code_ids(self, codes) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        return codes + self.code_offset

    def is_code(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.code_offset) & (ids < self.size)

    def is_text(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.text_offset) & (ids < self.code_offset)

    def generation_ids(self) -> list[int]:
        """The ids a sampler may emit after [SPEECH]."""
        ids = list(range(self.code_offset, self.size)) + [EOS]
        if self.aligned:
            ids = list(self.text_id_range) + ids
        return sorted(ids)

    def _index(self) -> dict[str, int]:
        return {t: self.text_offset + i for i, t in enumerate(self.text_tokens)}

    # ------------------------------------------------------------------------------- sequences

    def prompt(self, text_ids: list[int], prompt_codes) -> list[int]:
        """[BOS] text [SEP] prompt-codes [SPEECH]: what generation starts from."""
        return [BOS, *text_ids, SEP, *self.code_ids(prompt_codes).tolist(), SPEECH]

    def unconditional_prompt(self, prompt_codes) -> list[int]:
        """[BOS] [SEP] prompt-codes [SPEECH]: `prompt` without its text, the one layout of the unconditional
        sequence of classifier-free guidance, both where training drops the condition and where sampling guides."""
        return self.prompt([], prompt_codes)

    @staticmethod
    def prompt_text_ids(prompt_ids: list[int]) -> list[int]:
        """The text tokens of a prompt made by `prompt`."""
        return list(prompt_ids[1 : list(prompt_ids).index(SEP)])

    def target(self, codes, text_ids: list[int] | None = None, frames_per_token: list[int] | None = None) -> list[int]:
        """The target part, ending with EOS: interleaved when aligned, plain codes otherwise."""
        code_ids = self.code_ids(codes).tolist()
        if not self.aligned:
            return [*code_ids, EOS]
        if text_ids is None or frames_per_token is None or len(text_ids) != len(frames_per_token):
            raise ValueError("an aligned target needs one frame count per text token")
        if sum(frames_per_token) != len(code_ids):
            raise ValueError(f"frame counts sum to {sum(frames_per_token)}, codes have {len(code_ids)} frames")
        out, t = [], 0
        for tok, n in zip(text_ids, frames_per_token):
            out.append(tok)
            out += code_ids[t : t + n]
            t += n
        return [*out, EOS]

    def parse_target(self, ids) -> tuple[np.ndarray, np.ndarray, bool]:
        """Generated target ids -> (codes [frames], text token index of each frame or -1, ended with EOS)."""
        ids = np.asarray(ids, dtype=np.int64)
        ended = bool((ids == EOS).any())
        if ended:
            ids = ids[: int(np.argmax(ids == EOS))]
        codes, owner, current = [], [], -1
        for i in ids.tolist():
            if self.code_offset <= i < self.size:
                codes.append(i - self.code_offset)
                owner.append(current)
            elif self.text_offset <= i < self.code_offset:
                current = i - self.text_offset
        return np.asarray(codes, dtype=np.int64), np.asarray(owner, dtype=np.int64), ended

    # ---------------------------------------------------------------------------------- storage

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        data = {"specials": list(SPECIALS), **asdict(self)}
        data["text_tokens"] = list(self.text_tokens)
        (Path(directory) / "vocab.json").write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> Vocab:
        data = json.loads((Path(directory) / "vocab.json").read_text())
        if tuple(data.pop("specials")) != SPECIALS:
            raise ValueError(f"{directory}/vocab.json was written with other special tokens")
        return cls(tuple(data["text_tokens"]), int(data["codebook_size"]), bool(data["aligned"]))


def tag_prompt(prompt_ids: list[int], quality: str) -> list[int]:
    """The prompt with `quality`'s tag (QUALITY_TAGS) just before its [SPEECH], an existing tag replaced:
    [BOS] text [SEP] prompt-codes <tag> [SPEECH]. The text is untouched (`Vocab.prompt_text_ids` reads it alike)."""
    ids = untag_prompt(prompt_ids)
    at = ids.index(SPEECH)
    return [*ids[:at], QUALITY_TAGS[quality], *ids[at:]]


def untag_prompt(prompt_ids: list[int]) -> list[int]:
    """The prompt without its quality tag; unchanged when it has none (before [SPEECH] then stands a voice prompt
    code, or the text's own SEP when there is no voice prompt)."""
    ids = [int(t) for t in prompt_ids]
    at = ids.index(SPEECH)
    tagged = ids[at - 1] in QUALITY_TAGS.values() and at - 1 > ids.index(SEP)
    return [*ids[: at - 1], *ids[at:]] if tagged else ids


def frames_per_phone(phone_ms: list[int], frame_rate: float, n_frames: int) -> list[int]:
    """Phone durations (ms, from the start of the audio) -> whole code frames per phone, summing to n_frames."""
    edges = np.round(np.cumsum(phone_ms) * frame_rate / 1000.0).astype(np.int64)
    edges = np.minimum(edges, n_frames)
    edges[-1] = n_frames  # the codec's last (padded) frame belongs to the last phone
    return np.diff(np.concatenate([[0], edges])).tolist()
