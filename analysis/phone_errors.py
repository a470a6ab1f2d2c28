"""Held-out phone error rate of policy versions from their AR tokens alone: the phones each sample wrote
against the ones it was asked to say (`sa_ray/metrics/phones.py`), with no NAR, vocoder or recogniser, so
seconds a version instead of minutes and free of the recogniser's noise. The requests are exactly those of
`jobs.evaluate` / the align loop's evaluation at the same seeds, so the figures match their
`<split>_phone_error_rate`.

    python -m analysis.phone_errors --base checkpoints/base --adapters runs/p/align/adapters/v* \\
        --n 160 --seeds 0,1000 run_dir=runs/p codec.path=checkpoints/base/codec

`--out FILE` also writes every figure printed (and each sample's phone errors) as JSON.
`--record FILE` (once per policy: the base first, then the adapters) joins the samples with the word errors of the
evaluation that made them (an align record `align/records/iter_<k>.json` or a `jobs.evaluate --out` file,
evaluated at `--seeds` in that order, with `eval.utterances` = `--n`) and prints the WER of the samples
without and with phone errors, and for each adapter the same (utterance, seed) compared with the base's: a
WER change where neither sample has phone errors is acoustic, not a different choice of sentences.

`--compare A.json B.json` pairs two such `--out` files of the same samples (same `--n`, `--seeds` and data; e.g.
`model.own_phones=false` then `=true`) and prints, policy by policy and per held-out set, the change from A to B
of the share of samples with any phone error, with a 95% bootstrap interval over sentences (all voices and seeds
of a sentence drawn together):

    python -m analysis.phone_errors --compare phones-own-false.json phones-own-true.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from jobs._cli import DEFAULT_CONFIG
from sa_ray import lora
from sa_ray.codec import load_codec
from sa_ray.config import load_config
from sa_ray.evaluation import dev_test, heldout_requests, heldout_tables, pick_heldout, prompt_banks, sentence_key
from sa_ray.metrics.phones import phone_errors
from sa_ray.metrics.stats import WERChange, sentence_clusters, wer_change_stats
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Spelling


def phone_error_rates(
    tts: CodecTTS,
    tables: dict,
    banks: dict,
    n: int,
    seed: int,
    sampling: SamplingConfig,
    batch_size: int = 16,
    half: str = "all",
) -> dict[str, float]:
    """Per held-out set, the phone error rate of the `half` (`eval.split`) an evaluation at `seed` scores, each
    sample's phone errors and its sentence (the bootstrap's cluster)."""
    out = {}
    for split, rows in tables.items():
        picked = pick_heldout(dev_test(rows, half), n)
        out[f"{split}_utt_sentences"] = [sentence_key(r) for r in picked]
        requests = heldout_requests(picked, banks[split], random.Random(seed), seed)
        edits, phones = [], 0
        for start in range(0, len(requests), batch_size):
            generated, texts = tts.generate(requests[start : start + batch_size], sampling)
            edits += [phone_errors(ids, text, tts.vocab) for ids, text in zip(generated, texts)]
            phones += sum(len(text) for text in texts)
        out[split], out[f"{split}_utt_phone_errors"] = sum(edits) / phones, edits
    return out


def wer_by_phone_errors(edits: list[int], errors: list[int], words: list[int]) -> dict[str, float]:
    """WER of the samples without phone errors and of those with some (one sample per entry)."""
    out = {}
    for name, keep in (("no_phone_errors", lambda e: e == 0), ("phone_errors", lambda e: e > 0)):
        picked = [(err, n) for e, err, n in zip(edits, errors, words) if keep(e)]
        out[f"{name}_n"] = len(picked)
        out[f"{name}_wer"] = sum(e for e, _ in picked) / max(1, sum(n for _, n in picked))
    return out


def paired_by_phone_errors(
    base_edits: list[int],
    edits: list[int],
    base_errors: list[int],
    errors: list[int],
    words: list[int],
    sentences: list | None = None,
) -> dict[str, float]:
    """The same (utterance, seed) under the base and a policy, grouped by whether each sample has phone errors:
    `both_clean` (neither: a change of WER there is acoustic), `fixed`, `broken`, `both_bad`; each group's
    WER under the base and under the policy. `sentences` (each sample's, if recorded) makes the both-clean
    interval resample sentences, with all their seeds and voices, instead of samples."""
    out = {}
    groups = {"both_clean": (False, False), "fixed": (True, False), "broken": (False, True), "both_bad": (True, True)}
    for name, (was_bad, is_bad) in groups.items():
        picked = [i for i, (b, e) in enumerate(zip(base_edits, edits)) if (b > 0) == was_bad and (e > 0) == is_bad]
        n_words = max(1, sum(words[i] for i in picked))
        out[f"{name}_n"] = len(picked)
        out[f"{name}_base_wer"] = sum(base_errors[i] for i in picked) / n_words
        out[f"{name}_wer"] = sum(errors[i] for i in picked) / n_words
        if name == "both_clean" and picked:  # is the acoustic change beyond the noise? (paired bootstrap)
            clusters = None if sentences is None else [sentences[i] for i in picked]
            change = wer_change_stats(*([x[i] for i in picked] for x in (base_errors, words, errors, words)), clusters)
            out.update(both_clean_change_lo=change.lo, both_clean_change_hi=change.hi, both_clean_change_mde=change.mde)
    return out


def phone_error_share_change(
    base_edits: list[int], edits: list[int], sentences: list | None = None, samples: int = 2000, seed: int = 0
) -> WERChange:
    """The change of the share of samples with any phone error between two runs of the same samples (`edits`'
    share less `base_edits`'), by the paired bootstrap of a WER change: each sample one word, wrong when it has
    a phone error. `sentences` (each sample's) draws a sentence's samples together; None: each on its own."""
    bad = [[int(e > 0) for e in x] for x in (base_edits, edits)]
    return wer_change_stats(bad[0], [1] * len(bad[0]), bad[1], [1] * len(bad[1]), sentences, samples=samples, seed=seed)


def compare_runs(base: list[dict], results: list[dict]) -> list[dict]:
    """Two `--out` files' results of the same samples, paired policy by policy (in the order they were
    measured) and seed by seed: per policy and held-out set, the share of samples with any phone error under
    `base` and `results` and its change with a 95% interval over the sentences the files record."""
    policies = [{}, {}]
    for grouped, entries in zip(policies, (base, results)):
        for entry in entries:
            grouped.setdefault(entry["adapter"], []).append(entry)
    if len(policies[0]) != len(policies[1]):
        raise ValueError(f"different policies: {list(policies[0])} vs {list(policies[1])}")
    out = []
    for (name_a, runs_a), (name_b, runs_b) in zip(*(p.items() for p in policies)):
        seeds = [[r["seed"] for r in runs] for runs in (runs_a, runs_b)]
        if seeds[0] != seeds[1]:
            raise ValueError(f"{name_a} vs {name_b}: sampled at different seeds, {seeds[0]} vs {seeds[1]}")
        for split in (k.removesuffix("_utt_phone_errors") for k in runs_a[0] if k.endswith("_utt_phone_errors")):
            edits_a, edits_b = ([e for r in runs for e in r[f"{split}_utt_phone_errors"]] for runs in (runs_a, runs_b))
            sentences = [[k for r in runs for k in r.get(f"{split}_utt_sentences", [])] for runs in (runs_a, runs_b)]
            if sentences[0] != sentences[1] or len(sentences[0]) != len(edits_a):
                raise ValueError(f"{name_a} vs {name_b}: {split}: not the same sentences recorded for every sample")
            change = phone_error_share_change(edits_a, edits_b, sentences[0])
            out.append(
                {
                    "base": name_a,
                    "policy": name_b,
                    "split": split,
                    "n": len(edits_b),
                    "base_share": sum(e > 0 for e in edits_a) / len(edits_a),
                    "share": sum(e > 0 for e in edits_b) / len(edits_b),
                    "change": change.delta,
                    "change_lo": change.lo,
                    "change_hi": change.hi,
                    "change_mde": change.mde,
                    "clusters": change.clusters,
                }
            )
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--base", help="base model directory (ar/ + nar/)")
    ap.add_argument("--adapters", nargs="*", default=[], help="adapter directories (the base is always measured)")
    ap.add_argument("--n", type=int, default=160, help="utterances per held-out set")
    ap.add_argument(
        "--seeds",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0],
        help="sampling seeds, comma-separated (0,1000: eval.seeds=2 at eval.seed=0)",
    )
    ap.add_argument(
        "--record",
        dest="records",
        action="append",
        default=[],
        help="the evaluation that made a policy's samples; once per policy, the base first",
    )
    ap.add_argument("--out", default=None, help="also write the results (per-sample phone errors included) as JSON")
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="instead: two --out files of the same samples; the change from A to B of the share of samples with "
        "any phone error, with its 95%% bootstrap interval over sentences",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.compare:
        if args.base or args.adapters or args.records:
            ap.error("--compare reads two --out files: no --base, --adapters or --record")
        return compare_main(args)
    if not args.base:
        ap.error("--base is required (or --compare A B)")
    if args.records and len(args.records) != 1 + len(args.adapters):
        ap.error(f"--record: once per policy (the base and {len(args.adapters)} adapters), got {len(args.records)}")
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(0)
    codec = load_codec(cfg.codec, Path(cfg.run_dir) / "codec")
    base, vocab = load_ar(Path(args.base) / "ar")
    nar = NARModel.from_pretrained(Path(args.base) / "nar")
    tables = heldout_tables(Path(cfg.run_dir) / "data")
    banks = prompt_banks(tables, cfg.model.prompt_frames(codec.frame_rate), codec.n_codebooks)
    sampling = SamplingConfig.of_eval(cfg.eval)
    results, base_samples = [], {}
    for p, adapter in enumerate([None, *args.adapters]):
        tts = CodecTTS(lora.policy(base, adapter), vocab, nar, codec, Spelling.of_config(cfg))
        runs = [
            phone_error_rates(tts, tables, banks, args.n, seed, sampling, half=cfg.eval.split) for seed in args.seeds
        ]
        for seed, rates in zip(args.seeds, runs):
            results.append({"adapter": adapter or "base", "seed": seed, **rates})
            print(
                f"{adapter or 'base'}  seed {seed}:  phone error rate "
                + "  ".join(f"{split} {rates[split]:.4f}" for split in tables),
                flush=True,
            )
        if args.records:
            record = json.loads(Path(args.records[p]).read_text())
            for split in tables:
                edits = [e for rates in runs for e in rates[f"{split}_utt_phone_errors"]]
                errors, words = record[f"{split}_utt_errors"], record[f"{split}_utt_words"]
                if p == 0:
                    base_samples[split] = edits, errors, record
                if len(errors) != len(edits):
                    raise SystemExit(
                        f"error: {args.records[p]}: {len(errors)} {split} utterances, but --n {args.n} x "
                        f"{len(args.seeds)} seeds made {len(edits)} samples"
                    )
                split_wer = wer_by_phone_errors(edits, errors, words)
                results[-1][f"{split}_wer_by_phone_errors"] = split_wer
                print(
                    f"  {split}: WER {split_wer['no_phone_errors_wer']:.3f} over {split_wer['no_phone_errors_n']} "
                    f"samples without phone errors, {split_wer['phone_errors_wer']:.3f} over "
                    f"{split_wer['phone_errors_n']} with some"
                )
                if p > 0:  # the same samples' keys as the base's: (utterance, seed) in the same order
                    base_edits, base_errors, base_record = base_samples[split]
                    try:  # the samples' sentences, where the records hold them: the interval resamples those
                        sentences = sentence_clusters(base_record, record, split)
                    except ValueError as e:
                        raise SystemExit(f"error: {args.records[p]} vs {args.records[0]}: {e}") from None
                    paired = paired_by_phone_errors(base_edits, edits, base_errors, errors, words, sentences)
                    results[-1][f"{split}_paired_with_base"] = paired
                    print(
                        f"  {split} vs the base, same utterance and seed: "
                        + "; ".join(
                            f"{g.replace('_', ' ')} {paired[f'{g}_n']}: WER {paired[f'{g}_base_wer']:.3f} -> "
                            f"{paired[f'{g}_wer']:.3f}"
                            for g in ("both_clean", "fixed", "broken", "both_bad")
                        )
                        + (
                            f" (both clean: change 95% interval [{paired['both_clean_change_lo']:+.3f}, "
                            f"{paired['both_clean_change_hi']:+.3f}], MDE {paired['both_clean_change_mde']:.3f})"
                            if "both_clean_change_lo" in paired
                            else ""
                        )
                    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


def compare_main(args: argparse.Namespace) -> list[dict]:
    """`--compare A B`: print (and with `--out`, write) `compare_runs` of the two files."""
    runs = [json.loads(Path(f).read_text()) for f in args.compare]
    try:
        compared = compare_runs(*runs)
    except ValueError as e:
        raise SystemExit(f"error: {args.compare[0]} vs {args.compare[1]}: {e}") from None
    for c in compared:
        print(
            f"{args.compare[0]} ({c['base']}) -> {args.compare[1]} ({c['policy']}), {c['split']}: samples with any "
            f"phone error {100 * c['base_share']:.1f}% -> {100 * c['share']:.1f}%, {100 * c['change']:+.1f} points "
            f"[{100 * c['change_lo']:+.1f}, {100 * c['change_hi']:+.1f}] (95%, bootstrap over {c['clusters']} "
            f"sentences, {c['n']} samples; MDE {100 * c['change_mde']:.1f} points)"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(compared, indent=1))
    return compared


if __name__ == "__main__":
    main()
