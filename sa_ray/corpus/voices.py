"""Offline voices for the synthetic corpus: MBROLA (through espeak-ng), festival and espeak-ng.

A voice is named `<engine>-<name>`, and that name is also the speaker id in the data:
`mbrola-us1`, `festival-kal_diphone`, `espeak-en-us+m3`. MBROLA voices also report the phone
alignment of what they say (espeak-ng writes the .pho file that mbrola renders), which later stages
can use as frame-level durations. MBROLA and festival voices are what the offline ASR understands
(original-audio WER 0.08-0.16 here); espeak-ng formant variants score far worse. An MBROLA voice can
also speak with a `Prosody` of its own (rate, pitch, pauses), which varies how it says a sentence,
never what it says.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MBROLA_DIR = Path("/usr/share/mbrola")
ENGINES = ("mbrola", "festival", "espeak")
_EDGE_SILENCE_MS = (60, 120)  # leading / trailing pause kept around each sentence


class VoiceError(RuntimeError):
    """A voice cannot be used on this machine; the message says what to install."""


@dataclass(frozen=True)
class Prosody:
    """How one utterance is spoken, as factors of the voice's own prosody (1.0 = as espeak-ng lays it out).

    It is applied to the .pho text that mbrola renders rather than through espeak-ng's -s/-p, so the phones
    stay exactly those of the plain voice (only their timing and pitch change) and the durations reported
    with the audio stay exactly those it was rendered from.
    """

    rate: float = 1.0  # speaking rate: every phone lasts 1/rate as long
    pitch: float = 1.0  # every pitch target (Hz) is multiplied by it
    pause: float = 1.0  # pauses inside the sentence last `pause` times longer still (the edges stay fixed)

    @classmethod
    def draw(cls, amount: float, key: str) -> Prosody:
        """Rate and pitch uniform within 1 +- amount, pauses within 1 +- 2 * amount, seeded by `key`."""
        rng = random.Random(key)  # str seeds are stable across processes (hash() of a str is not)
        rate, pitch, pause = (1 + rng.uniform(-k * amount, k * amount) for k in (1, 1, 2))
        return cls(round(rate, 4), round(pitch, 4), round(pause, 4))

    def apply(self, lines: list[list[str]]) -> list[list[str]]:
        """Rescales .pho lines (phone, ms, then pairs of position % and pitch Hz); phones are never added or
        dropped: a phone keeps at least 1 ms."""
        out = []
        for phone, ms, *points in lines:
            scale = (self.pause if phone == "_" else 1.0) / self.rate
            hz = [str(round(float(v) * self.pitch)) if j % 2 else v for j, v in enumerate(points)]
            out.append([phone, str(max(1, round(int(ms) * scale))), *hz])
        return out

    def to_dict(self) -> dict:
        return {"rate": self.rate, "pitch": self.pitch, "pause": self.pause}


@dataclass(frozen=True)
class Voice:
    engine: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> Voice:
        engine, sep, name = spec.partition("-")
        if not sep or engine not in ENGINES or not name:
            raise VoiceError(
                f"voice {spec!r} must look like <engine>-<name> with engine one of {ENGINES}, "
                "e.g. mbrola-us1, festival-kal_diphone, espeak-en-us+m3"
            )
        return cls(engine, name)

    @property
    def speaker(self) -> str:
        return f"{self.engine}-{self.name}"

    def check_available(self) -> None:
        hint = "run `bash scripts/install-system.sh` (Debian packages)"
        if shutil.which("espeak-ng") is None and self.engine in ("mbrola", "espeak"):
            raise VoiceError(f"voice {self.speaker} needs espeak-ng: {hint}")
        if self.engine == "mbrola":
            if shutil.which("mbrola") is None or not self._mbrola_db().is_file():
                raise VoiceError(f"voice {self.speaker} needs the packages mbrola and mbrola-{self.name}: {hint}")
        if self.engine == "festival" and shutil.which("text2wave") is None:
            raise VoiceError(f"voice {self.speaker} needs festival and its voice package: {hint}")

    def synthesize(
        self, text: str, wav_path: Path, prosody: Prosody | None = None
    ) -> tuple[list[str], list[int]] | None:
        """Speaks `text` into `wav_path`; returns (phones, durations in ms) when the engine reports them.
        `prosody` (MBROLA voices only) varies how it is said; None says it the voice's one way."""
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        if prosody is not None and self.engine != "mbrola":
            raise VoiceError(f"only MBROLA voices take a prosody (it rescales their .pho); {self.speaker} does not")
        if self.engine == "mbrola":
            pho = _run(["espeak-ng", "-v", f"mb-{self.name}", "-q", "--pho", text])
            phones, ms, pho_text = _edge_silences(pho, prosody)
            _run(["mbrola", "-e", str(self._mbrola_db()), "-", str(wav_path)], stdin=pho_text)
            return phones, ms
        if self.engine == "festival":
            _run(["text2wave", "-eval", f"(voice_{self.name})", "-o", str(wav_path)], stdin=text)
            return None
        _run(["espeak-ng", "-v", self.name, "-w", str(wav_path), text])
        return None

    def phones(self, text: str) -> tuple[list[str], list[int]]:
        """The phones (and their durations in ms) this MBROLA voice would say for `text`, without audio."""
        if self.engine != "mbrola":
            raise VoiceError(f"only MBROLA voices report phones; {self.speaker} does not")
        phones, ms, _ = _edge_silences(_run(["espeak-ng", "-v", f"mb-{self.name}", "-q", "--pho", text]))
        return phones, ms

    def _mbrola_db(self) -> Path:
        return MBROLA_DIR / self.name / self.name


def _run(cmd: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise VoiceError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    return proc.stdout


def _edge_silences(pho: str, prosody: Prosody | None = None) -> tuple[list[str], list[int], str]:
    """Parses espeak-ng's .pho output and normalises the pauses at both ends of the sentence.

    espeak-ng starts speaking at once and ends with a long pause; a short fixed pause at each end keeps
    the diphones natural and the utterances free of dead air (shorter sequences for the codec LM).
    `prosody` rescales what lies between those two pauses, so every '_' it varies is a pause inside the sentence.
    """
    lines = [ln.split() for ln in pho.splitlines() if ln.strip() and not ln.startswith(";")]
    while lines and lines[0][0] == "_":
        lines.pop(0)
    while lines and lines[-1][0] == "_":
        lines.pop()
    if prosody is not None:
        lines = prosody.apply(lines)
    lines = [["_", str(_EDGE_SILENCE_MS[0])], *lines, ["_", str(_EDGE_SILENCE_MS[1])]]
    phones = [ln[0] for ln in lines]
    ms = [int(ln[1]) for ln in lines]
    return phones, ms, "\n".join(" ".join(ln) for ln in lines) + "\n"
