"""ship_base: a trained base model -> the checkpoint shipped in the repo (bfloat16 safetensors, loads as float32).

    python -m jobs.ship_base --model runs/base/pretrain/model --codec runs/base/codec --out checkpoints/base

bfloat16 halves the files (27 MB -> 14 MB for the tiny recipe) so the base model fits in git; the loaders
(`load_ar`, `NARModel.from_pretrained`) cast it back to float32. The held-out figures in README are
measured on the shipped (rounded) weights, i.e. on exactly what a user gets.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from jobs import _cli


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="trained model directory (ar/ + nar/)")
    ap.add_argument("--codec", required=True, help="the fitted codec its data was tokenised with (<run_dir>/codec)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    src, out = Path(args.model), Path(args.out)
    if not (Path(args.codec) / "codec.json").is_file():
        raise FileNotFoundError(f"{args.codec} holds no fitted codec (codec.json)")
    if not (src / "ar" / "model.safetensors").is_file() or not (src / "nar").is_dir():
        raise FileNotFoundError(f"{src} is not a base model directory (ar/ and nar/): run `python -m jobs.pretrain`")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    shutil.copytree(args.codec, out / "codec")  # the model's codes mean something only with these codebooks
    for weights in out.glob("*/model.safetensors"):
        tensors = load_file(weights)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}, weights,
                  metadata={"format": "pt"})
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB (bfloat16)")
    return out


if __name__ == "__main__":
    _cli.run(main)
