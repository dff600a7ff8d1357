"""Figures for a fitted :class:`con2.Con2Detector` (needs matplotlib: ``pip install con2[plot]``).

- :func:`plot_embeddings`: 2-D PCA of training, normal-test and anomalous-test embeddings
  in both contexts, each image's two embeddings joined by a line (the paper's Figure 3);
- :func:`plot_score_histogram`: scores of normal and anomalous images, with the threshold;
- :func:`plot_loss_curve`: the training loss per epoch.

Each function draws on ``ax`` (a new figure when None) and returns the axes.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted

from con2._embedding import context_images, embed_views
from con2._engine import forward_size
from con2._input import to_float, validate_images

__all__ = ["context_embeddings", "plot_embeddings", "plot_loss_curve", "plot_score_histogram"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "con2.plotting needs matplotlib: pip install 'con2[plot]' (or matplotlib)."
        ) from exc
    return plt


def _axes(ax, **figure):
    return ax if ax is not None else _pyplot().subplots(**figure)[1]


def context_embeddings(detector, X) -> np.ndarray:
    """Embed images in every context of a fitted detector.

    Parameters
    ----------
    detector : Con2Detector
        Fitted.
    X : array-like of images
        As :meth:`con2.Con2Detector.score_samples` accepts.

    Returns
    -------
    embeddings : ndarray of shape (n_contexts + 1, n_samples, embed_dim)
        Index 0 is the images themselves, index k their k-th context augmentation.
    """
    check_is_fitted(detector)
    images = validate_images(detector, X, reset=False)
    device = detector.device_
    stacked = context_images(to_float(images.to(device)), detector.contexts_)
    z = embed_views(
        detector.encoder_, stacked, None, forward_size(device, detector.batch_size), device
    )
    return z[0].view(len(detector.contexts_) + 1, len(images), -1).cpu().numpy()


def plot_embeddings(detector, X_train, X_normal, X_anomalous, *, max_points=150, axes=None):
    """PCA of embeddings in both contexts, pairs joined by lines (paper, Figure 3).

    The PCA is fitted on the training embeddings of all contexts. The left panel shows
    normal test images, the right panel anomalous ones, over the training cloud; a line
    joins the two embeddings of each test image. Parallel lines mean the contexts are
    aligned.

    Parameters
    ----------
    detector : Con2Detector
        Fitted with at least one context.
    X_train, X_normal, X_anomalous : array-like of images
        Training images, normal test images, anomalous test images.
    max_points : int, default=150
        At most this many images of each set are drawn (the first ones).
    axes : pair of matplotlib Axes, default=None

    Returns
    -------
    axes : pair of matplotlib Axes
    """
    if not detector.contexts_:
        raise ValueError("plot_embeddings needs a detector trained with a context.")
    sets = [np.asarray(X)[:max_points] for X in (X_train, X_normal, X_anomalous)]
    train, normal, anomalous = (context_embeddings(detector, X) for X in sets)
    pca = PCA(n_components=2).fit(train.reshape(-1, train.shape[-1]))
    if axes is None:
        axes = _pyplot().subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)[1]
    colours = ("tab:blue", "tab:orange")
    panels = [("normal test", normal), ("anomalous test", anomalous)]
    for ax, (title, test) in zip(axes, panels, strict=True):
        for k in range(2):
            p = pca.transform(train[k])
            ax.scatter(*p.T, s=6, alpha=0.25, color=colours[k], label=f"train, context {k}")
        a, b = pca.transform(test[0]), pca.transform(test[1])
        ax.plot(np.stack([a[:, 0], b[:, 0]]), np.stack([a[:, 1], b[:, 1]]),
                color="grey", lw=0.5, alpha=0.6)  # fmt: skip
        ax.scatter(
            *a.T, s=14, color=colours[0], edgecolor="black", lw=0.4, label=f"{title}, context 0"
        )
        ax.scatter(
            *b.T, s=14, color=colours[1], edgecolor="black", lw=0.4, label=f"{title}, context 1"
        )
        ax.set_title(f"{title} images; lines join each image's two contexts", fontsize=9)
        ax.set_xlabel("PC 1")
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("PC 2")
    return axes


def plot_score_histogram(detector, X_normal, X_anomalous, *, bins=40, ax=None):
    """Histograms of ``score_samples`` for normal and anomalous images, and ``offset_``.

    Parameters
    ----------
    detector : Con2Detector
        Fitted.
    X_normal, X_anomalous : array-like of images
    bins : int, default=40
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes
    """
    ax = _axes(ax, figsize=(6, 4))
    normal, anomalous = detector.score_samples(X_normal), detector.score_samples(X_anomalous)
    edges = np.histogram_bin_edges(np.concatenate([normal, anomalous]), bins=bins)
    ax.hist(normal, bins=edges, alpha=0.6, density=True, label=f"normal ({len(normal)})")
    ax.hist(anomalous, bins=edges, alpha=0.6, density=True, label=f"anomalous ({len(anomalous)})")
    ax.axvline(detector.offset_, color="black", ls="--", label="threshold (offset_)")
    ax.set_xlabel("score_samples (higher = more normal)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return ax


def plot_loss_curve(detector, *, ax=None):
    """Mean training loss per epoch (``loss_curve_``).

    The loss rises while the weight of content alignment grows from 0 to ``alpha_max``;
    compare runs of equal length, not epochs within a run.

    Parameters
    ----------
    detector : Con2Detector
        Fitted.
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes
    """
    check_is_fitted(detector)
    ax = _axes(ax, figsize=(6, 4))
    epochs = np.arange(1, len(detector.loss_curve_) + 1)
    ax.plot(epochs, detector.loss_curve_, marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss (context + alpha * content)")
    ax.set_title("training loss; it rises while alpha grows from 0", fontsize=9)
    return ax
