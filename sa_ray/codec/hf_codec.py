"""EnCodec and Mimi through transformers, behind the `Codec` interface.

This is the only module that touches transformers' codec APIs, so a change there is a change here.
EnCodec (24 kHz) is the classic VALL-E codec; Mimi's first layer is distilled from a speech SSL model,
the closest transformers has to SpeechTokenizer's semantic layer 0.

Weights come from a local directory in Hugging Face layout (config.json + *.safetensors) or, online
only, a hub id. `from_config` builds a randomly initialised model for tests and offline smoke runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, EncodecConfig, EncodecModel, MimiConfig, MimiModel
from transformers.models.encodec.modeling_encodec import EncodecEuclideanCodebook
from transformers.models.mimi.modeling_mimi import MimiEuclideanCodebook

from sa_ray.audio import resample
from sa_ray.codec.base import Codec

_MODELS = {"encodec": (EncodecConfig, EncodecModel), "mimi": (MimiConfig, MimiModel)}
_CODEBOOKS = (EncodecEuclideanCodebook, MimiEuclideanCodebook)


class HFCodec(Codec):
    """A transformers EnCodec or Mimi model. Build it with `from_pretrained` or `from_config`.

    EnCodec's layer count follows `bandwidth` (one of config.target_bandwidths) or `n_codebooks` (the
    first n layers of the smallest bandwidth that has them); with neither, transformers' default
    (the lowest bandwidth). Mimi takes `n_codebooks` only and defaults to all of its quantizers.
    """

    def __init__(
        self,
        model: EncodecModel | MimiModel,
        n_codebooks: int | None = None,
        bandwidth: float | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        config = model.config
        self.kind: str = config.model_type
        if self.kind not in _MODELS:
            raise ValueError(f"unsupported codec model_type {self.kind!r}; expected one of {sorted(_MODELS)}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = int(config.sampling_rate)
        self.codebook_size = int(config.codebook_size)
        self.bandwidth: float | None = None
        if self.kind == "encodec":
            # The 48 kHz model normalises and chunks with overlap: its codes need per-chunk scales and
            # do not form one [n_codebooks, frames] grid.
            if config.chunk_length_s is not None or config.normalize:
                raise ValueError("only unchunked, unnormalised EnCodec (e.g. encodec_24khz) is supported")
            # config.frame_rate is rounded up to an int; the true rate is what sets the frame count.
            self.frame_rate = config.sampling_rate / config.hop_length
            self.bandwidth = self._pick_bandwidth(n_codebooks, bandwidth)
            self.n_codebooks = n_codebooks or model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)
        else:
            if bandwidth is not None:
                raise ValueError("bandwidth applies to EnCodec only; give Mimi n_codebooks")
            self.frame_rate = float(config.frame_rate)
            self.n_codebooks = n_codebooks or config.num_quantizers
            if not config.num_semantic_quantizers <= self.n_codebooks <= config.num_quantizers:
                raise ValueError(
                    f"Mimi n_codebooks must lie in [{config.num_semantic_quantizers}, {config.num_quantizers}], "
                    f"got {self.n_codebooks}"
                )

    def _pick_bandwidth(self, n_codebooks: int | None, bandwidth: float | None) -> float:
        bandwidths = list(self.model.config.target_bandwidths)
        layers_at = self.model.quantizer.get_num_quantizers_for_bandwidth
        if bandwidth is not None:
            if bandwidth not in bandwidths:
                raise ValueError(f"EnCodec bandwidth must be one of {bandwidths}, got {bandwidth}")
            if n_codebooks is not None and not 1 <= n_codebooks <= layers_at(bandwidth):
                raise ValueError(
                    f"n_codebooks={n_codebooks} does not fit bandwidth {bandwidth} ({layers_at(bandwidth)} layers)"
                )
            return bandwidth
        if n_codebooks is None:
            return bandwidths[0]
        # Residual quantisation is greedy, so the first n layers at any larger bandwidth are the same.
        for bw in sorted(bandwidths):
            if 1 <= n_codebooks <= layers_at(bw):
                return bw
        raise ValueError(f"n_codebooks={n_codebooks} exceeds EnCodec's {layers_at(max(bandwidths))} layers")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        n_codebooks: int | None = None,
        bandwidth: float | None = None,
        device: str | torch.device = "cpu",
    ) -> HFCodec:
        """Loads a local HF-layout directory, or a hub id when online; the error names what failed."""
        name = str(name_or_path)
        local = Path(name).expanduser()
        # A hub id is "org/name"; anything else that is not an existing directory is a missing path.
        is_hub_id = not local.is_dir() and not local.is_absolute() and not name.startswith((".", "~"))
        is_hub_id = is_hub_id and name.count("/") <= 1
        if not is_hub_id and not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"codec weights not found: {name!r} is not a directory holding config.json and *.safetensors"
            )
        source = str(local) if not is_hub_id else name
        try:
            config = AutoConfig.from_pretrained(source)
        except OSError as err:  # transformers raises OSError for both offline and unknown repos
            raise OSError(
                f"could not load codec {name!r}: it is not a local directory and the Hugging Face hub did not "
                f"provide it ({err}). Without network access the weights must be supplied as a local path "
                f"(a directory holding config.json and *.safetensors)."
            ) from err
        if config.model_type not in _MODELS:
            raise ValueError(f"{name!r} is a {config.model_type!r} model, not one of {sorted(_MODELS)}")
        model = _MODELS[config.model_type][1].from_pretrained(
            source, config=config, dtype=torch.float32, use_safetensors=True
        )
        return cls(model, n_codebooks, bandwidth, device)

    @classmethod
    def from_config(
        cls,
        kind: str = "encodec",
        seed: int = 0,
        init_codebooks: bool = True,
        n_codebooks: int | None = None,
        bandwidth: float | None = None,
        device: str | torch.device = "cpu",
        **config_overrides,
    ) -> HFCodec:
        """A randomly initialised model; config_overrides go to EncodecConfig / MimiConfig (e.g. tiny sizes).

        transformers initialises every codebook to zeros (all codes would be 0); init_codebooks fills them
        from the model's own encoder outputs, see `_init_codebooks`.
        """
        if kind not in _MODELS:
            raise ValueError(f"kind must be one of {sorted(_MODELS)}, got {kind!r}")
        config_cls, model_cls = _MODELS[kind]
        with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = model_cls(config_cls(**config_overrides))
        codec = cls(model, n_codebooks, bandwidth, device)
        if init_codebooks:
            codec._init_codebooks(seed)
        return codec

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors, loadable by `from_pretrained` (layer choice is not saved)."""
        self.model.save_pretrained(str(directory), safe_serialization=True)

    def _init_codebooks(self, seed: int) -> None:
        """Fills each codebook with jittered samples of the vectors it quantises, as VQ training seeds them.

        Random directions would not do: a random encoder's outputs share a large constant offset, so one
        code wins every frame. One encode of a seeded test signal visits the codebooks in residual order;
        each one is filled from its own input the moment it is first called, so later layers see true
        residuals of the already-filled earlier ones.
        """
        gen = torch.Generator().manual_seed(seed)
        codebooks = [m for m in self.model.modules() if isinstance(m, _CODEBOOKS)]

        def filling_quantize(book: torch.nn.Module):
            def quantize(hidden: torch.Tensor) -> torch.Tensor:
                picks = torch.randint(len(hidden), (book.codebook_size,), generator=gen).to(hidden.device)
                jitter = torch.randn(book.codebook_size, hidden.shape[1], generator=gen).to(hidden.device)
                _fill_codebook(book, hidden[picks] + 0.1 * hidden.std(0, correction=0) * jitter)
                del book.quantize  # back to the class method
                return book.quantize(hidden)

            return quantize

        for book in codebooks:
            book.quantize = filling_quantize(book)
        try:
            with torch.no_grad():
                self._run_encoder(_test_signal(self.sample_rate, seed), all_layers=True)
        finally:
            unfilled = [book for book in codebooks if "quantize" in vars(book)]
            for book in unfilled:
                del book.quantize
        if unfilled:
            raise RuntimeError(f"{len(unfilled)} of {len(codebooks)} codebooks were not reached by encode")

    def _run_encoder(self, wav: np.ndarray, all_layers: bool = False) -> torch.Tensor:
        x = torch.from_numpy(wav).to(self.device)[None, None]  # [batch, channels, samples]
        if self.kind == "encodec":
            bandwidth = max(self.model.config.target_bandwidths) if all_layers else self.bandwidth
            # audio_codes: [chunks, batch, layers, frames]; one chunk since chunking is ruled out.
            return self.model.encode(x, bandwidth=bandwidth, return_dict=True).audio_codes[0, 0]
        n = self.model.config.num_quantizers if all_layers else self.n_codebooks
        # audio_codes: [batch, layers, frames].
        return self.model.encode(x, num_quantizers=n, return_dict=True).audio_codes[0]

    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Mono float wav (1-D, or [samples, channels] which is averaged) -> int64 [n_codebooks, frames]."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 2:
            wav = wav.mean(axis=1)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"wav must be a non-empty mono waveform, got shape {wav.shape}")
        wav = resample(wav, sr, self.sample_rate)
        with torch.inference_mode():
            codes = self._run_encoder(np.ascontiguousarray(wav))
        return codes[: self.n_codebooks].cpu().numpy().astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The first k layers (k >= Mimi's semantic layers) -> float32 wav at sample_rate."""
        min_layers = 1 if self.kind == "encodec" else self.model.config.num_semantic_quantizers
        codes = self._check_codes(codes, min_layers)
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        c = torch.from_numpy(codes).to(self.device)
        with torch.inference_mode():
            if self.kind == "encodec":
                # One chunk, and audio_scales [None] because the 24 kHz model does not normalise.
                wav = self.model.decode(c[None, None], [None], return_dict=True).audio_values
            else:
                wav = self.model.decode(c[None], return_dict=True).audio_values
        return wav[0, 0].float().cpu().numpy()


def _fill_codebook(book: torch.nn.Module, vectors: torch.Tensor) -> None:
    """Sets a codebook's centroids, keeping its running statistics consistent with them."""
    if isinstance(book, EncodecEuclideanCodebook):  # embed = embed_avg / cluster_size
        book.embed.copy_(vectors)
        book.embed_avg.copy_(vectors)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)
    else:  # Mimi: embed = embed_sum / cluster_usage, cached in _embed
        book.embed_sum.copy_(vectors)
        book.cluster_usage.fill_(1.0)
        book.initialized.fill_(1.0)
        book._embed = None


def _test_signal(sample_rate: int, seed: int, seconds: float = 2.0) -> np.ndarray:
    """A rising chirp plus noise in segments of differing loudness: varied frames to sample codes from."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    loudness = np.repeat(rng.uniform(0.05, 0.5, size=20), -(-n // 20))[:n]
    chirp = np.sin(2 * np.pi * (100.0 * t + 450.0 * t**2))  # 100 Hz rising to ~1.9 kHz over 2 s
    return (loudness * (0.6 * chirp + 0.4 * rng.standard_normal(n))).astype(np.float32)
