"""The NAR model (codec layers 1..L-1 from layer 0, text and a voice prompt): shapes, masking, storage, learning."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from sa_ray.models.nar import NARConfig, NARModel, collate_nar

C, L, N_TEXT = 16, 3, 6


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**kw) -> NARConfig:
    return NARConfig(
        n_codebooks=L,
        codebook_size=C,
        n_text_tokens=N_TEXT,
        **{"hidden": 64, "layers": 2, "heads": 4, "ff": 128, "dropout": 0.0, **kw},
    )


def utterance(rng: np.random.Generator, aligned: bool = True) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(text, codes [L, T], frame_text [T]) where layer k = (3 * layer0 + k + phone) % C: a rule the NAR
    model can only follow by reading both the lower layer and the phone each frame voices."""
    text = rng.integers(0, N_TEXT, rng.integers(2, 6)).tolist()
    frame_text = np.repeat(text, rng.integers(1, 4, len(text)))
    level0 = rng.integers(0, C, len(frame_text))
    codes = np.stack([level0] + [(3 * level0 + k + frame_text) % C for k in range(1, L)])
    return text, codes, (frame_text if aligned else None)


def examples(rng: np.random.Generator, n: int, aligned: bool = True) -> list[dict]:
    out = []
    for _ in range(n):
        text, codes, frame_text = utterance(rng, aligned)
        prompt = utterance(rng)[1]
        out.append({"text": text, "prompt": prompt, "codes": codes, "frame_text": frame_text})
    return out


def test_collate_pads_and_masks():
    batch = collate_nar(examples(np.random.default_rng(0), 3) + examples(np.random.default_rng(1), 1, aligned=False))
    B, T = 4, batch["code_mask"].shape[1]
    assert batch["codes"].shape == (B, L, T) and batch["prompt"].shape[:2] == (B, L)
    assert batch["text"].shape == batch["text_mask"].shape and batch["frame_text"].shape == (B, T)
    assert (batch["frame_text"][3] == -1).all()  # plain mode: every frame unknown
    assert (batch["frame_text"][~batch["code_mask"]] == -1).all()
    with pytest.raises(ValueError):
        collate_nar([{"text": [1], "prompt": np.zeros((L, 2)), "codes": np.zeros((L - 1, 3)), "frame_text": None}])


def test_forward_loss_generate_shapes():
    torch.manual_seed(0)
    model = NARModel(tiny_config(dropout=0.1))
    batch = collate_nar(examples(np.random.default_rng(0), 4))
    B, T = batch["code_mask"].shape
    logits = model(
        batch["text"],
        batch["text_mask"],
        batch["prompt"],
        batch["prompt_mask"],
        batch["codes"],
        batch["frame_text"],
        batch["code_mask"],
        torch.tensor([1, 2, 1, 2]),
    )
    assert logits.shape == (B, T, C) and torch.isfinite(logits).all()
    loss, stats = model.loss(batch, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and set(stats) == {"nar_loss", "nar_acc"}
    assert abs(stats["nar_loss"] - np.log(C)) < 1.0  # starts near the uniform prediction
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())

    text, codes, frame_text = utterance(np.random.default_rng(3))
    prompt = utterance(np.random.default_rng(4))[1]
    for ft in (frame_text, None):
        out = model.generate(text, prompt, codes[0], ft)
        assert out.shape == codes.shape and out.dtype == np.int64
        assert (out[0] == codes[0]).all() and out.min() >= 0 and out.max() < C
    assert model.training  # generate restores the mode it found
    assert model.generate(text, prompt[:, :0], codes[0, :5], None).shape == (L, 5)  # no prompt at all


def test_deterministic_given_seed():
    batch = collate_nar(examples(np.random.default_rng(0), 3))
    losses = []
    for _ in range(2):
        torch.manual_seed(7)
        model = NARModel(tiny_config()).eval()
        losses.append(model.loss(batch, torch.Generator().manual_seed(1))[0])
    assert torch.equal(losses[0], losses[1])


def test_loss_ignores_padding():
    torch.manual_seed(0)
    model = NARModel(tiny_config()).eval()
    batch = collate_nar(examples(np.random.default_rng(5), 4))
    assert not batch["code_mask"].all() and not batch["text_mask"].all() and not batch["prompt_mask"].all()
    messy = {k: v.clone() for k, v in batch.items()}
    g = torch.Generator().manual_seed(9)
    for key, mask in (("text", "text_mask"), ("frame_text", "code_mask")):
        messy[key][~batch[mask]] = torch.randint(-50, 50, messy[key].shape, generator=g)[~batch[mask]]
    for key, mask in (("prompt", "prompt_mask"), ("codes", "code_mask")):
        pad = ~batch[mask][:, None, :].expand_as(batch[key])
        messy[key][pad] = torch.randint(-50, 50, messy[key].shape, generator=g)[pad]
    a, _ = model.loss(batch, torch.Generator().manual_seed(2))
    b, _ = model.loss(messy, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = NARModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "nar")
    assert {p.name for p in (tmp_path / "nar").iterdir()} == {"config.json", "model.safetensors"}
    loaded = NARModel.from_pretrained(tmp_path / "nar")
    assert loaded.cfg == model.cfg and not loaded.training
    batch = collate_nar(examples(np.random.default_rng(0), 3))
    args = [batch[k] for k in ("text", "text_mask", "prompt", "prompt_mask", "codes", "frame_text", "code_mask")]
    level = torch.tensor([1, 2, 2])
    assert torch.equal(model(*args, level), loaded(*args, level))


def test_save_load_round_trip_sharded(tmp_path):
    """A small max_shard_size writes the HF sharded layout, which loads back to the same model."""
    import json

    torch.manual_seed(0)
    model = NARModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "nar")  # an earlier single-file save there is replaced, not left behind
    model.save_pretrained(tmp_path / "nar", max_shard_size="50KB")
    names = {p.name for p in (tmp_path / "nar").iterdir()}
    shards = {n for n in names if n.startswith("model-") and n.endswith(".safetensors")}
    assert len(shards) > 1 and names == {"config.json", "model.safetensors.index.json", *shards}
    index = json.loads((tmp_path / "nar" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict()) and set(index["weight_map"].values()) == shards
    loaded = NARModel.from_pretrained(tmp_path / "nar")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    batch = collate_nar(examples(np.random.default_rng(0), 3))
    args = [batch[k] for k in ("text", "text_mask", "prompt", "prompt_mask", "codes", "frame_text", "code_mask")]
    level = torch.tensor([1, 2, 2])
    assert torch.equal(model(*args, level), loaded(*args, level))


def test_learns_residual_layers_from_layer0_and_phones():
    """Layer k depends on layer 0 AND the frame's phone: ~300 steps must get it (nearly) right."""
    start = time.monotonic()
    torch.manual_seed(0)
    model = NARModel(tiny_config())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = model.loss(collate_nar(examples(rng, 16)), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        _, stats = model.loss(collate_nar(examples(np.random.default_rng(123), 64)), g)
    assert stats["nar_acc"] > 0.9, stats
    # Generation chains the levels: layer 2 is predicted from the predicted layer 1.
    hits = []
    for text, codes, frame_text in (utterance(np.random.default_rng(1000 + i)) for i in range(16)):
        out = model.generate(text, utterance(rng)[1], codes[0], frame_text)
        hits.append((out[1:] == codes[1:]).mean())
    assert np.mean(hits) > 0.85, hits
    assert time.monotonic() - start < 60
