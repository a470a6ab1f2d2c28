"""Evaluation backends: the spec factories, Whisper ASR and WavLM speaker similarity through transformers.

No pretrained weights exist here (and the hub is unreachable), so the transformers backends run on TINY
random models built offline and saved to a temporary directory, exactly as a downloaded checkpoint
would be laid out: what is tested is the plumbing (loading from a local directory, resampling,
batching, decoding, embedding, cosine), not recognition or verification quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sa_ray.audio import read_wav, write_wav
from sa_ray.config import CorpusConfig
from sa_ray.metrics.backends import DomainPocketSphinxASR, make_asr, make_sim
from sa_ray.metrics.hub import resolve_model


def _sine(seconds: float, sr: int, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seconds: float, sr: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


# --------------------------------------------------------------------------------------------- #
# Tiny offline models


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    """A random 1+1-layer Whisper (d_model 32) with a real WhisperTokenizer and WhisperFeatureExtractor.

    The tokenizer is Whisper's own class over a byte-level BPE with no merges (256 byte tokens) plus
    Whisper's special tokens in their real order (<|endoftext|>, <|startoftranscript|>, the languages,
    task tokens, <|notimestamps|>, timestamps), so language/task prompting resolves as for a real checkpoint.
    """
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    languages = [f"<|{code}|>" for code in LANGUAGES]
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *languages,
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    stamps = ["<|%.2f|>" % (i * 0.02) for i in range(1501)]
    for token in specials + stamps:
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.add_tokens(stamps)

    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=32,
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    # A random decoder would happily emit special and timestamp tokens, which a trained one does not do
    # after <|notimestamps|>: suppressing them makes it "say" byte tokens, so decoding yields real text.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        max_length=24,
        is_multilingual=True,
        lang_to_id={t: vocab[t] for t in languages},
        task_to_id={"translate": vocab["<|translate|>"], "transcribe": vocab["<|transcribe|>"]},
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        suppress_tokens=[vocab[t] for t in specials + stamps if t != "<|endoftext|>"],
    )
    out = tmp_path_factory.mktemp("models") / "tiny-whisper"
    model.save_pretrained(out)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory) -> Path:
    """A random 1-layer WavLMForXVector (hidden 32, conv channels 16, real strides) + Wav2Vec2FeatureExtractor."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=100,
        tdnn_dim=(16, 16, 16, 16, 32),
        xvector_output_dim=16,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("models") / "tiny-wavlm-sv"
    WavLMForXVector(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------- #
# Factories and errors


def test_pocketsphinx_default_is_the_domain_lm_recogniser(tmp_path):
    from sa_ray.metrics.asr import PocketSphinxASR

    pq.write_table(pa.table({"text": ["the cat sat on the mat", "a dog ran to the red house"]}), tmp_path / "train")
    corpus = CorpusConfig(kind="librispeech", root=str(tmp_path))  # recorded corpus: LM of the train text
    asr = make_asr("pocketsphinx", tmp_path, corpus)
    assert isinstance(asr, DomainPocketSphinxASR) and isinstance(asr.asr, PocketSphinxASR)
    assert asr.backend == "pocketsphinx-domain-lm"
    assert (tmp_path / "asr_lm" / "domain.lm").is_file()
    hyps = asr.transcribe_batch([(_sine(0.5, 22050), 22050)])
    assert len(hyps) == 1 and isinstance(hyps[0], str)
    # The recorded backend name is accepted as a spec too, and the builder can be injected.
    built = []
    asr = make_asr("pocketsphinx-domain-lm", tmp_path, corpus, domain_asr=lambda d, c: built.append(d) or "x")
    assert built == [tmp_path] and asr.asr == "x"


def test_domain_lm_lands_whole_when_another_process_builds_it_too(tmp_path, monkeypatch):
    """Roles starting together each build the LM: the first one in place is kept, no builder leaves a trace."""
    from sa_ray.metrics import asr as asr_module

    pq.write_table(pa.table({"text": ["the cat sat on the mat", "a dog ran to the red house"]}), tmp_path / "train")
    build = asr_module.build_domain_lm

    def racing(sentences, out_dir):
        build(sentences, tmp_path / "asr_lm")  # another process finishes first
        (tmp_path / "asr_lm" / "theirs").write_text("")
        return build(sentences, out_dir)

    monkeypatch.setattr(asr_module, "build_domain_lm", racing)
    asr = asr_module.domain_asr(tmp_path, CorpusConfig(kind="librispeech", root=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asr_lm", "train"]
    assert sorted(p.name for p in (tmp_path / "asr_lm").iterdir()) == ["domain.dict", "domain.lm", "theirs"]
    assert asr.backend == "pocketsphinx+lm:domain.lm"


def test_metrics_import_nothing_above_them():
    """The metrics are the bottom of evaluation: no module of the package imports evaluation or a role, and
    the backends' model helpers live apart from the factory that imports the backends."""
    import ast

    import sa_ray.metrics

    for path in Path(sa_ray.metrics.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in names if m.startswith(("sa_ray.evaluation", "actors", "jobs"))}, path.name
        if path.stem != "backends":
            assert "sa_ray.metrics.backends" not in names, path.name


def test_resemblyzer_is_the_default_sim():
    from sa_ray.metrics.speaker import ResemblyzerSIM

    sim = make_sim()
    assert isinstance(sim, ResemblyzerSIM) and sim.backend == "resemblyzer"


def test_a_files_embedding_is_made_once_and_is_its_audios(tmp_path):
    """Evaluation compares every generated clip with real utterances by path: embedded once per encoder."""
    sim = make_sim()
    path = tmp_path / "real.wav"
    write_wav(path, _noise(1.0, 16000, 5), 16000)
    first = sim.embed_file(path)
    np.testing.assert_array_equal(first, sim.embed(*read_wav(path)))
    assert sim.embed_file(str(path)) is first  # the cached array, not a second embedding
    sim.forget_files()
    again = sim.embed_file(path)
    assert again is not first and np.array_equal(again, first)  # embedded afresh, the same embedding


def test_unknown_specs_and_missing_paths_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="'kaldi'"):
        make_asr("kaldi", tmp_path, CorpusConfig())
    with pytest.raises(ValueError, match="'ecapa'"):
        make_sim("ecapa")
    with pytest.raises(ValueError, match="resemblyzer:x"):
        make_sim("resemblyzer:x")  # resemblyzer has one bundled model: a model name is a mistake
    with pytest.raises(ValueError, match="no model"):
        make_asr("whisper:")
    with pytest.raises(ValueError, match="data_dir"):
        make_asr("pocketsphinx")
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        make_asr(f"whisper:{missing}")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        make_sim("wavlm:./no-such-model")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        make_sim(f"wavlm:{tmp_path / 'weights.bin'}")


def test_resolve_model_tells_local_dirs_from_hub_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(str(tmp_path)) == (str(tmp_path), True)
    assert resolve_model("openai/whisper-large-v3") == ("openai/whisper-large-v3", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("microsoft/wavlm-base-plus-sv") == ("microsoft/wavlm-base-plus-sv", False)
    with pytest.raises(FileNotFoundError):
        resolve_model("a/b/c")  # more than one '/': a path, and it does not exist


# --------------------------------------------------------------------------------------------- #
# Whisper


def test_whisper_transcribes_resampled_audio_and_batches_like_single_items(tiny_whisper):
    from sa_ray.metrics.whisper_asr import WhisperASR

    asr = make_asr(f"whisper:{tiny_whisper}")
    assert isinstance(asr, WhisperASR) and asr.backend == "whisper:tiny-whisper"
    assert asr._prompt == {"task": "transcribe", "language": "en"}  # multilingual: language forced

    text = asr.transcribe(_sine(1.0, 22050), 22050)
    assert isinstance(text, str) and text  # the tiny model "says" bytes: some text comes out
    items = [
        (_sine(1.0, 22050), 22050),
        (_noise(0.5, 16000, 1), 16000),
        (np.zeros(0, np.float32), 16000),
        (_noise(31.0, 16000, 2), 16000),
    ]  # over Whisper's 30 s window: long-form decoding
    asr.batch_size = 2
    batch = asr.transcribe_batch(items)
    assert batch == [asr.transcribe(w, sr) for w, sr in items]
    assert batch[0] == text and batch[2] == "" and all(isinstance(t, str) for t in batch)


# --------------------------------------------------------------------------------------------- #
# WavLM


def test_wavlm_similarity_is_a_symmetric_cosine(tiny_wavlm):
    from sa_ray.metrics.wavlm_sim import WavLMSIM

    sim = make_sim(f"wavlm:{tiny_wavlm}")
    assert isinstance(sim, WavLMSIM) and sim.backend == "wavlm:tiny-wavlm-sv"
    a, b = (_sine(1.0, 22050), 22050), (_noise(1.2, 16000, 3), 16000)
    emb = sim.embed(*a)
    assert emb.shape == (16,) and np.isfinite(emb).all() and np.linalg.norm(emb) > 0
    assert sim.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    ab, ba = sim.similarity(a, b), sim.similarity(b, a)
    assert ab == pytest.approx(ba, abs=1e-6) and -1.0 <= ab <= 1.0
    # Shorter than the x-vector's context: no voice to compare, as with resemblyzer.
    assert sim.similarity((np.zeros(1000, np.float32), 16000), a) == 0.0


def _tiny_audio_model(out: Path, num_labels: int) -> Path:
    """A random 1-layer Wav2Vec2 audio classifier (num_labels=1: a regression head, as MOS predictors have)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)
    return out


def test_mos_is_skipped_by_default_and_scores_with_a_regression_model(tmp_path):
    from sa_ray.metrics.backends import make_mos
    from sa_ray.metrics.mos import HFMOS

    assert make_mos() is None and make_mos("none") is None  # no MOS weights offline: evaluation says it skipped
    mos = make_mos(f"hf:{_tiny_audio_model(tmp_path / 'tiny-mos', 1)}")
    assert isinstance(mos, HFMOS) and mos.backend == "hf:tiny-mos"
    a = _sine(1.0, 22050)
    score = mos.score(a, 22050)
    assert np.isfinite(score) and mos.score(a, 22050) == score  # deterministic
    assert mos.score(_noise(1.0, 16000, 1), 16000) != score
    with pytest.raises(ValueError, match="regression head"):
        make_mos(f"hf:{_tiny_audio_model(tmp_path / 'classifier', 3)}")
    with pytest.raises(ValueError, match="'utmos'"):
        make_mos("utmos")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        make_mos("hf:./no-such-model")
