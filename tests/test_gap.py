"""Distribution-gap metrics: they see a gap where there is one and none where there is none."""

from __future__ import annotations

import numpy as np
import pytest

from sa_ray.metrics.gap import (
    embedding_plot,
    mean_pooled_states,
    mmd_rbf,
    paired_probe_accuracy,
    probe_accuracy,
)


def _gaussians(shift: float, n: int = 60, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(size=(n, dim)) + shift


def test_probe_and_mmd_separate_shifted_gaussians():
    golden, synthetic = _gaussians(shift=1.5)
    assert probe_accuracy(golden, synthetic) > 0.9
    assert mmd_rbf(golden, synthetic) > 0.2


def test_probe_and_mmd_see_no_gap_within_one_distribution():
    golden, synthetic = _gaussians(shift=0.0)
    assert probe_accuracy(golden, synthetic, seed=0) < 0.7
    assert abs(mmd_rbf(golden, synthetic)) < 0.05


def test_paired_probe_sees_a_consistent_shift_that_the_sentence_hides():
    rng = np.random.default_rng(0)
    sentences = rng.normal(size=(40, 8)) * 10  # each pair sits at its own sentence, far from the others
    golden = sentences + rng.normal(size=(40, 8)) * 0.3
    shifted = sentences + rng.normal(size=(40, 8)) * 0.3 + 0.5  # every synthetic moved the same way
    assert probe_accuracy(golden, shifted) < 0.75  # hidden by the sentence spread
    assert paired_probe_accuracy(golden, shifted) > 0.9
    unshifted = sentences + rng.normal(size=(40, 8)) * 0.3  # differences in every direction
    assert 0.3 < paired_probe_accuracy(golden, unshifted) < 0.7
    with pytest.raises(ValueError, match="same shape"):
        paired_probe_accuracy(golden, unshifted[:-1])


def test_small_and_degenerate_sets():
    golden, synthetic = _gaussians(shift=3.0, n=3)
    assert probe_accuracy(golden, synthetic, folds=5) > 0.9  # folds shrink to the 3 rows per set
    with pytest.raises(ValueError, match="synthetic set has 1 rows"):
        probe_accuracy(golden, synthetic[:1])
    with pytest.raises(ValueError, match="at least 2"):
        mmd_rbf(golden[:1], synthetic)
    with pytest.raises(ValueError, match="features"):
        mmd_rbf(golden, synthetic[:, :2])


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def test_mean_pooled_states_shape_and_padding(tiny_llama):
    import torch

    seqs = [[1, 5, 6, 7, 8], [1, 9, 10, 11, 12, 13, 14, 15, 16, 17], [1, 2], [1, 3, 4, 20, 21, 22, 23]]
    starts = [2, 4, 1, 3]
    pooled = mean_pooled_states(tiny_llama, seqs, starts, batch_size=3)
    assert pooled.shape == (4, 32) and pooled.dtype == np.float32
    assert np.isfinite(pooled).all()
    for i in range(len(seqs)):  # alone (no padding) == inside a padded batch, and in the input order
        alone = mean_pooled_states(tiny_llama, [seqs[i]], [starts[i]])
        np.testing.assert_allclose(pooled[i], alone[0], atol=1e-5)
    # exactly the mean over positions start: of the last hidden layer
    with torch.inference_mode():
        hidden = tiny_llama(torch.tensor([seqs[1]]), output_hidden_states=True).hidden_states[-1][0]
    np.testing.assert_allclose(pooled[1], hidden[starts[1] :].mean(0).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no target positions"):
        mean_pooled_states(tiny_llama, [[1, 2]], [2])


def test_embedding_plot_writes_a_picture(tmp_path):
    import matplotlib.image

    golden, synthetic = _gaussians(shift=2.0, n=25)
    path = embedding_plot(golden, synthetic, tmp_path / "gap.png", "golden vs synthetic")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (500, 600)
    assert image[..., :3].std() > 0.05  # not blank: points, axes and legend drew something
    # both colours are there (tab:blue and tab:orange)
    rgb = (image[..., :3] * 255).astype(int).reshape(-1, 3)
    assert (np.abs(rgb - [31, 119, 180]).sum(1) < 60).sum() > 50
    assert (np.abs(rgb - [255, 127, 14]).sum(1) < 60).sum() > 50
    assert embedding_plot(golden, synthetic, tmp_path / "pca.png", "pca", method="pca").is_file()
    with pytest.raises(ValueError, match="tsne or pca"):
        embedding_plot(golden, synthetic, tmp_path / "x.png", "x", method="umap")
