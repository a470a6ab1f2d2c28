"""Corpora: the built-in synthetic corpus and readers for LibriSpeech, LibriTTS and VCTK layouts."""

from sa_ray.corpus.types import Utterance

__all__ = ["Utterance"]
