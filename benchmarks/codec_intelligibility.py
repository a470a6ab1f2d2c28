"""How intelligible is each codec's round trip? Offline ASR (pocketsphinx) WER of held-out audio:
original vs encode -> decode with all layers vs layer 0 only.

    python -m benchmarks.codec_intelligibility --run-dir runs/tiny --n 40
    python -m benchmarks.codec_intelligibility --run-dir runs/tiny --encodec /path/to/encodec_24khz

Needs a prepared run (`make demo` or `python -m jobs.prepare`); prints a Markdown table and writes the rows to
<run-dir>/codec_intelligibility.json (and to --json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from sa_ray.audio import read_wav
from sa_ray.codec import Codec
from sa_ray.codec.hf_codec import HFCodec
from sa_ray.codec.mel_kmeans import MelKMeansCodec
from sa_ray.config import load_config
from sa_ray.metrics.asr import PocketSphinxASR, domain_asr
from sa_ray.metrics.wer import wer


def round_trip_wer(
    name: str, codec: Codec | None, rows: list[dict], asrs: list, layers: int | None, bf16: bool = False
) -> dict:
    """{"audio": name, "wer": {ASR backend: WER}, "codec_rtf": codec seconds per audio second (None: no codec)}.
    `bf16`: decode under bf16 autocast (what a faster vocoder would cost in intelligibility)."""
    hyps, t_codec = [[] for _ in asrs], 0.0
    for row in tqdm(rows, desc=name, leave=False):
        wav, sr = read_wav(row["audio_path"])
        if codec is not None:
            t0 = time.perf_counter()
            codes = codec.encode(wav, sr)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                wav, sr = codec.decode(codes[: layers or codes.shape[0]]), codec.sample_rate
            t_codec += time.perf_counter() - t0
        for h, asr in zip(hyps, asrs):
            h.append(asr.transcribe(wav, sr))
    seconds = sum(r["duration"] for r in rows)
    refs = [r["text"] for r in rows]
    return {
        "audio": name,
        "wer": {asr.backend: wer(refs, h) for asr, h in zip(asrs, hyps)},
        "codec_rtf": t_codec / seconds if codec is not None else None,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/tiny")
    ap.add_argument("--split", default="heldout_sentences")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--encodec", default=None, help="local HF directory of a pretrained EnCodec (24 kHz)")
    ap.add_argument("--bf16", action="store_true", help="also: the all-layer round trip decoded in bf16 autocast")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    run = Path(args.run_dir)
    rows = pq.read_table(run / "data" / args.split, columns=["utt_id", "text", "audio_path", "duration"]).to_pylist()
    rows = rows[:: max(1, len(rows) // args.n)][: args.n]
    asrs = [PocketSphinxASR(), domain_asr(run / "data", load_config(run / "data" / "config.yaml").corpus)]
    mk = MelKMeansCodec.load(run / "codec")
    L = mk.n_codebooks
    results = [
        round_trip_wer("original", None, rows, asrs, None),
        round_trip_wer(
            f"mel k-means {L} x {mk.codebook_size} @ {mk.frame_rate:.1f} Hz, all layers", mk, rows, asrs, None
        ),
        round_trip_wer("mel k-means, layer 0 only", mk, rows, asrs, 1),
    ]
    if args.bf16:
        results.append(round_trip_wer("mel k-means, all layers, vocoder in bf16", mk, rows, asrs, None, bf16=True))
    if args.encodec:
        enc = HFCodec.from_pretrained(args.encodec, bandwidth=6.0)
        results.append(round_trip_wer(f"EnCodec {args.encodec} 6 kbps", enc, rows, asrs, None))
    enc_random = HFCodec.from_config("encodec", seed=0, init_codebooks=True, n_codebooks=8)
    results.append(
        round_trip_wer("EnCodec 24 kHz, random weights (no download possible)", enc_random, rows, asrs, None)
    )

    print(f"\n{len(rows)} utterances of {run / 'data' / args.split}\n")
    print("| audio | " + " | ".join(f"WER ({a.backend})" for a in asrs) + " | codec time / audio time |")
    print("|---|" + "---|" * (len(asrs) + 1))
    for r in results:
        rtf = f"{r['codec_rtf']:.3f}" if r["codec_rtf"] is not None else "-"
        print(f"| {r['audio']} | " + " | ".join(f"{r['wer'][a.backend]:.3f}" for a in asrs) + f" | {rtf} |")
    for path in (run / "codec_intelligibility.json", args.json):
        if path:
            Path(path).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
