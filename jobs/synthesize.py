"""synthesize: text + a voice (a corpus speaker id or a prompt wav) -> a wav file.

    python -m jobs.synthesize --text "The cat sat on the mat." --speaker mbrola-us2 --out cat.wav
    python -m jobs.synthesize --text "Hello there." --prompt-wav me.wav --out hello.wav model_dir=...

The model is <run_dir>/pretrain/model unless `--model DIR` names another; `--adapter` puts a policy version on it
(a directory or models:/<name>@<alias>), only if that adapter was trained on this very base (sa_ray.lineage).

Best-of-N (`sa_ray.best_of`): `--best-of N` samples the sentence at seeds --seed, --seed+1, ..., --seed+N-1 (one
batch) and keeps the candidate its `--scorer` rates highest (ties: the lowest seed); it prints every candidate's
score and which one it kept. Scorers: `phones` (the default for an aligned model: minus the phone error rate of
the target a candidate wrote; scored before rendering, so only the chosen one is rendered), `asr` (minus the WER
of eval.asr's transcript of each candidate's speech; the default otherwise) and `asr_sim` (plus the eval.sim
similarity of that speech to the voice prompt).

    python -m jobs.synthesize --text "The cat sat on the mat." --speaker mbrola-us2 --best-of 4 --out cat.wav
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from jobs import _cli
from sa_ray import best_of, lineage, lora, tracking
from sa_ray.audio import read_wav, write_wav
from sa_ray.codec import load_codec
from sa_ray.config import load_config
from sa_ray.data.examples import PromptBank
from sa_ray.models.vocab import Vocab
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Spelling


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG)
    ap.add_argument("--text", required=True)
    voice = ap.add_mutually_exclusive_group(required=True)
    voice.add_argument("--speaker", help="a speaker id of the prepared corpus")
    voice.add_argument("--prompt-wav", help="~3 s of the voice to clone")
    ap.add_argument("--model", default=None, help="model directory (ar/ + nar/)")
    ap.add_argument(
        "--adapter", default=None, help="a policy version on it: a LoRA adapter directory or models:/<name>@<alias>"
    )
    ap.add_argument("--out", default="synth.wav")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument(
        "--best-of", type=_at_least_one, default=1, help="sample N candidates and keep the best by --scorer (1 = off)"
    )
    ap.add_argument(
        "--scorer",
        choices=sorted(best_of.SCORERS),
        default=None,
        help="what --best-of picks by (default: phones for an aligned model, else asr)",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.run_dir)

    codec = load_codec(cfg.codec, run_dir / "codec")
    model_dir = Path(args.model) if args.model else run_dir / "pretrain" / "model"
    if not (model_dir / "ar").is_dir():
        raise FileNotFoundError(f"no model in {model_dir}: run `python -m jobs.pretrain` or pass --model")
    cfg.eval.check_model(Vocab.load(model_dir / "ar").aligned)
    tts = CodecTTS.load(model_dir, codec, Spelling.of_config(cfg), cfg.eval.forced_phones)
    if args.adapter:
        with tempfile.TemporaryDirectory() as tmp:
            adapter = args.adapter
            if adapter.startswith("models:/"):
                adapter = tracking.download_model(
                    adapter, Path(tmp) / "adapter", tracking.resolve_uri(cfg.tracking.uri)
                )
            fingerprint = lineage.fingerprint(model_dir, run_dir / "codec", cfg.codec.kind)
            lineage.check(adapter, fingerprint, model_dir.resolve(), args.adapter)  # only on its own base
            tts.ar = lora.policy(tts.ar, adapter).eval()
    frames = cfg.model.prompt_frames(codec.frame_rate)
    if args.prompt_wav:
        prompt = codec.encode(*read_wav(args.prompt_wav))[:, :frames]
    else:
        bank = PromptBank.of_voices(run_dir / "data", frames, codec.n_codebooks)
        if args.speaker not in bank.by_speaker:
            raise FileNotFoundError(
                f"speaker {args.speaker!r} has no utterance in {run_dir / 'data'}; "
                f"the voices are {', '.join(sorted(bank.by_speaker))}"
            )
        prompt = bank.draw(args.speaker, "", random.Random(args.seed))
    scorer = None
    if args.best_of > 1:
        scorer = best_of.make_scorer(args.scorer or best_of.default_scorer(tts.vocab), tts.vocab, tts.codec, cfg)
    best = best_of.synthesize_best(
        tts,
        [Request(args.text, prompt, args.seed, args.speaker)],
        [args.best_of],
        scorer,
        SamplingConfig(temperature=args.temperature, cfg_scale=cfg.eval.cfg_scale),
        fit_positions=True,
    )[0]
    if best.scores:
        print(f"best of {args.best_of} by {best.scorer}:")
        for k, (seed, score) in enumerate(zip(best_of.candidate_seeds(args.seed, args.best_of), best.scores)):
            print(f"  candidate {k} (seed {seed}): {score:+.4f}" + ("  <- chosen" if k == best.chosen else ""))
    out = best.synthesis
    write_wav(args.out, out.wav, codec.sample_rate)
    print(
        f"{args.out}: {len(out.wav) / codec.sample_rate:.2f} s"
        + ("" if out.ended else " (hit the length limit before EOS)")
    )
    return Path(args.out)


def _at_least_one(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return n


if __name__ == "__main__":
    _cli.run(main)
