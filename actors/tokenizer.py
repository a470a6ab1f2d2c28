"""Ray Data actor pool role: validate, phonemise and encode utterances with a codec loaded once."""

from __future__ import annotations

import pyarrow as pa
import torch

from actors.placement import role_device
from sa_ray.codec import load_codec
from sa_ray.config import CodecConfig, PrepareConfig
from sa_ray.data.prepare import tokenize_rows


class UtteranceTokenizer:
    """`ds.map_batches(UtteranceTokenizer, compute=ActorPoolStrategy(...), batch_format="pyarrow", ...)`."""

    def __init__(
        self, codec: dict, codec_dir: str, prepare: dict, phonemes: str, encode: bool = True, num_gpus: float = 0.0
    ):
        # One actor per core does the parallelism; intra-op threads would only fight over the cores.
        torch.set_num_threads(1)
        self.codec = load_codec(CodecConfig(**codec), codec_dir, role_device("tokenizer", num_gpus))
        self.rules = PrepareConfig(**prepare)
        self.phonemes = phonemes
        self.encode = encode

    def __call__(self, batch: pa.Table) -> pa.Table:
        return tokenize_rows(batch.to_pylist(), self.codec, self.rules, self.phonemes, self.encode)
