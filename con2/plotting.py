"""Figures for a fitted :class:`con2.Con2Detector` (needs matplotlib: ``pip install con2[plot]``).

- :func:`plot_embeddings`: 2-D PCA of training, normal-test and anomalous-test embeddings
  in both contexts, each image's two embeddings joined by a line (the paper's Figure 3);
- :func:`plot_score_histogram`: scores of normal and anomalous images, with the threshold;
- :func:`plot_loss_curve`: the training loss per epoch;
- :func:`plot_anomaly_maps`: images over their anomaly maps, on one colour scale.

Each function draws on ``ax`` (a new figure when None) and returns the axes.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted

from con2 import io
from con2._embedding import context_images, embed_views
from con2._engine import forward_size
from con2._input import scoring_batches, to_float
from con2.maps import heat, overlay

__all__ = ["context_embeddings", "plot_anomaly_maps", "plot_embeddings", "plot_loss_curve",
           "plot_score_histogram"]  # fmt: skip


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
    X : array-like of images, folder or list of image files
        As :meth:`con2.Con2Detector.score_samples` accepts (files a batch at a time).

    Returns
    -------
    embeddings : ndarray of shape (n_contexts + 1, n_samples, embed_dim)
        Index 0 is the images themselves, index k their k-th context augmentation.
    """
    check_is_fitted(detector)
    device, n_contexts = detector.device_, len(detector.contexts_) + 1
    forward = forward_size(device, detector.batch_size)
    parts = []
    for images in scoring_batches(detector, X):
        stacked = context_images(to_float(images.to(device)), detector.contexts_)
        z = embed_views(detector.encoder_, stacked, None, forward, device)
        parts.append(z[0].view(n_contexts, len(images), -1).cpu())
    return torch.cat(parts, dim=1).numpy()


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
    X_train, X_normal, X_anomalous : array-like of images, folder or list of image files
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
    sets = [io.list_images(X)[:max_points] if io.is_file_input(X) else np.asarray(X)[:max_points]
            for X in (X_train, X_normal, X_anomalous)]  # fmt: skip
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


def plot_anomaly_maps(detector, X, *, method="gradient", reference="nearest", scale=None,
                      max_images=8, axes=None):  # fmt: skip
    """Draw images (top row) and their anomaly maps over them (bottom row), one colour scale.

    Each image is titled with its ``score_samples`` value and its verdict. The colour
    scale runs from 0 (the image unchanged) to ``scale`` for every image alike, so
    normal regions are not painted red by a per-image stretch.

    Parameters
    ----------
    detector : Con2Detector
        Fitted.
    X : array-like of images, folder or list of image files
        As in ``score_samples``; the first ``max_images`` are drawn.
    method, reference : str
        As in :meth:`Con2Detector.anomaly_maps`.
    scale : float, default=None
        The map value drawn at full colour; None: the largest value of these maps.
    max_images : int, default=8
    axes : array of matplotlib Axes of shape (2, n_images), default=None

    Returns
    -------
    axes : array of matplotlib Axes of shape (2, n_images)
    """
    check_is_fitted(detector)
    subset = io.list_images(X)[:max_images] if io.is_file_input(X) else X[:max_images]
    images = to_float(next(scoring_batches(detector, subset))).numpy()
    if len(images) == 0:
        raise ValueError("X holds no images to draw.")
    maps = detector.anomaly_maps(subset, method=method, reference=reference)
    scores = detector.score_samples(subset)
    scale = float(scale) if scale is not None else float(maps.max()) or 1.0
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(2, len(images), figsize=(1.6 * len(images), 3.6), squeeze=False)
    pictures = images.transpose(0, 2, 3, 1)
    for i, (picture, values, score) in enumerate(zip(pictures, maps, scores, strict=True)):
        shown = picture[..., 0] if picture.shape[-1] == 1 else picture
        axes[0, i].imshow(shown, cmap="gray", vmin=0, vmax=1)
        verdict = "anomaly" if score < detector.offset_ else "normal"
        axes[0, i].set_title(f"{score:.3g}\n{verdict}", fontsize=8)
        axes[1, i].imshow(overlay(shown, values, scale))
        for ax in axes[:, i]:
            ax.set_axis_off()
    from matplotlib import cm, colors

    ramp = colors.ListedColormap(heat(np.linspace(0, 1, 256)))
    mappable = cm.ScalarMappable(colors.Normalize(0, scale), ramp)
    axes[1, 0].figure.colorbar(mappable, ax=list(axes[1]), shrink=0.8, label="anomaly map")
    return axes
