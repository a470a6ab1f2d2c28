"""ship_base: a trained base model -> the checkpoint shipped in the repo (bfloat16 safetensors, loads as float32).

    python -m jobs.ship_base --model runs/base/pretrain/model --codec runs/base/codec --out checkpoints/base

bfloat16 halves the files (27 MB -> 14 MB for the tiny recipe) so the base model fits in git; the loaders
(`load_ar`, `NARModel.from_pretrained`) cast it back to float32. No file in git may exceed 5 MB, so both
models' weights are written in the Hugging Face sharded layout (model-0000i-of-0000N.safetensors shards of
at most SHARD_SIZE + model.safetensors.index.json), which transformers, vLLM and `NARModel` load unchanged.
The held-out figures in README are measured on the shipped (rounded) weights, i.e. on exactly what a user gets.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file

from jobs import _cli
from sa_ray import atomic

SHARD_SIZE = "4MB"  # per weights file (4 * 10**6 bytes of tensors): git's limit here is 5 MB a file
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


def has_weights(directory: Path) -> bool:
    """Whether `directory` holds safetensors weights in the HF layout (one file, or an index + shards)."""
    return (directory / SINGLE).is_file() or (directory / INDEX).is_file()


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of `directory`'s weights, either layout (safetensors only)."""
    if not (directory / INDEX).is_file():
        return load_file(directory / SINGLE)
    shards = sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values()))
    return {k: v for shard in shards for k, v in load_file(directory / Path(shard).name).items()}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="trained model directory (ar/ + nar/)")
    ap.add_argument("--codec", required=True, help="the fitted codec its data was tokenised with (<run_dir>/codec)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    src, out = Path(args.model), Path(args.out)
    if not (Path(args.codec) / "codec.json").is_file():
        raise FileNotFoundError(f"{args.codec} holds no fitted codec (codec.json)")
    if not has_weights(src / "ar") or not has_weights(src / "nar"):
        raise FileNotFoundError(f"{src} is not a base model directory (ar/ and nar/): run `python -m jobs.pretrain`")
    staging = atomic.aside(out)  # made beside it, then swapped in whole
    shutil.copytree(src, staging)
    shutil.copytree(args.codec, staging / "codec")  # the model's codes mean something only with these codebooks
    for model in ("ar", "nar"):
        tensors = read_weights(staging / model)
        # replaces the copied weight files (single or sharded) with the bf16 shards
        save_torch_state_dict(
            {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
            staging / model,
            max_shard_size=SHARD_SIZE,
        )
    atomic.swap_in(staging, out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB (bfloat16)")
    return out


if __name__ == "__main__":
    _cli.run(main)
