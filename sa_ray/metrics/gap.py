"""The distribution gap between golden and synthetic codec-token sequences (SpeechAlign, section 3).

The AR model's own samples differ from golden codes in ways the NAR model (trained on golden codes
only) notices. The paper shows it by embedding both sets with the AR model and looking at them. Here
the gap is also measured, so iterations can be compared by numbers:

- `mean_pooled_states`: one vector per sequence, the AR model's last hidden layer averaged over the
  target (speech) positions;
- `probe_accuracy`: how well a cross-validated linear probe tells the two sets apart (0.5: no gap);
- `mmd_rbf`: the unbiased squared maximum mean discrepancy between the two sets (0: no gap);
- `embedding_plot`: the paper's picture, a 2-D t-SNE of both sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mean_pooled_states(model, sequences: list[list[int]], starts: list[int], batch_size: int = 16) -> np.ndarray:
    """Mean of the last-layer hidden states over positions `starts[i]:` of each sequence -> [N, hidden].

    `model` is a Hugging Face causal LM. Batches are right-padded; with causal attention the real
    positions never see the padding, and the padding is left out of the mean.
    """
    import torch

    if len(sequences) != len(starts):
        raise ValueError(f"{len(sequences)} sequences but {len(starts)} starts")
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        if not 0 <= start < len(seq):
            raise ValueError(f"sequence {i}: start {start} leaves no target positions in a sequence of {len(seq)}")
    model.eval()
    device = next(model.parameters()).device
    out: np.ndarray | None = None
    # longest first, so each batch holds sequences of similar length and little padding is computed
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = len(sequences[idx[0]])
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            target = torch.zeros(len(idx), width, dtype=torch.float32)
            for row, i in enumerate(idx):
                seq = sequences[i]
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
                target[row, starts[i] : len(seq)] = 1.0
            hidden = (
                model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
                .hidden_states[-1]
                .float()
                .cpu()
            )
            pooled = (hidden * target[..., None]).sum(1) / target.sum(1, keepdim=True)
            if out is None:
                out = np.empty((len(sequences), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled.numpy()
    if out is None:
        raise ValueError("no sequences to embed")
    return out


def _check_sets(golden, synthetic) -> tuple[np.ndarray, np.ndarray]:
    golden, synthetic = np.asarray(golden, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    for name, x in (("golden", golden), ("synthetic", synthetic)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array [n, features]; got shape {x.shape}")
        if len(x) < 2:
            raise ValueError(f"{name} set has {len(x)} rows; the gap needs at least 2 in each set")
    if golden.shape[1] != synthetic.shape[1]:
        raise ValueError(f"golden has {golden.shape[1]} features but synthetic has {synthetic.shape[1]}")
    return golden, synthetic


def probe_accuracy(golden, synthetic, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated balanced accuracy of a logistic-regression probe separating the two sets.

    Balanced accuracy (the mean of the per-set recalls) keeps 0.5 the no-gap value also when the sets
    differ in size; for equal sizes it is plain accuracy. Stratified folds, at most as many as the
    smaller set has rows (and at least 2).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    golden, synthetic = _check_sets(golden, synthetic)
    x = np.concatenate([golden, synthetic])
    y = np.r_[np.zeros(len(golden), dtype=int), np.ones(len(synthetic), dtype=int)]
    k = max(2, min(folds, len(golden), len(synthetic)))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(probe, x, y, cv=cv, scoring="balanced_accuracy")))


def paired_probe_accuracy(golden, synthetic, folds: int = 5, seed: int = 0) -> float:
    """`probe_accuracy` for PAIRED sets (row i of both = the same prompt), with each pair's mean removed.

    When the sentence dominates the embedding (golden and synthetic speech of one sentence lie side by side,
    far from other sentences), the unpaired probe sees no gap even if every synthetic sequence is shifted
    the same way. Centred, the pair becomes (+d_i, -d_i) with d_i = (golden_i - synthetic_i) / 2, and the
    probe asks whether the differences share a direction: 0.5 = no systematic gap, 1.0 = a consistent one.
    Both halves of a pair stay in one fold (GroupKFold), so no pair is half seen in training.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    golden, synthetic = _check_sets(golden, synthetic)
    if golden.shape != synthetic.shape:
        raise ValueError(f"paired sets need the same shape; got {golden.shape} and {synthetic.shape}")
    d = (golden - synthetic) / 2
    x, y = np.concatenate([d, -d]), np.r_[np.zeros(len(d), dtype=int), np.ones(len(d), dtype=int)]
    order = np.random.default_rng(seed).permutation(len(d))  # GroupKFold is deterministic: shuffle the pairs
    groups = np.r_[order, order]
    cv = GroupKFold(n_splits=max(2, min(folds, len(d))))
    probe = LogisticRegression(max_iter=2000, fit_intercept=False)  # centred pairs: the boundary goes through 0
    return float(np.mean(cross_val_score(probe, x, y, groups=groups, cv=cv, scoring="balanced_accuracy")))


def mmd_rbf(x, y) -> float:
    """Unbiased squared MMD with k(a, b) = exp(-|a - b|^2 / (2 s^2)), s = median pairwise distance.

    The median is taken over the pooled set, so the bandwidth follows the data's scale. Being
    unbiased, the estimate can be slightly negative when the sets come from one distribution.
    """
    x, y = _check_sets(x, y)
    z = np.concatenate([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[~np.eye(len(z), dtype=bool)]
    s2 = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0  # all points equal: any width does
    k = np.exp(-d2 / (2.0 * s2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def embedding_plot(golden, synthetic, path: str | Path, title: str, seed: int = 0, method: str = "tsne") -> Path:
    """2-D map of both sets (t-SNE, or "pca" for a fast linear view), one colour per set, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.preprocessing import StandardScaler

    golden, synthetic = _check_sets(golden, synthetic)
    x = StandardScaler().fit_transform(np.concatenate([golden, synthetic]))
    if method == "tsne":
        from sklearn.manifold import TSNE

        # sklearn needs perplexity < n; (n - 1) / 3 keeps about three neighbourhoods' worth of points
        perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    elif method == "pca":
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    else:
        raise ValueError(f"method must be tsne or pca; got {method!r}")

    # an own Agg canvas instead of pyplot: no global backend state, safe inside Ray workers and threads
    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = len(golden)
    ax.scatter(xy[:n, 0], xy[:n, 1], s=14, alpha=0.75, c="tab:blue", label=f"golden ({n})")
    ax.scatter(xy[n:, 0], xy[n:, 1], s=14, alpha=0.75, c="tab:orange", label=f"synthetic ({len(synthetic)})")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
