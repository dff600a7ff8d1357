"""The one-class Fashion-MNIST protocol the benchmarks share.

Train on the training images of one class, score the whole test set, AUROC with that
class as normal (labels +1 normal, -1 anomaly). Here: the data (read once per process),
the training images of a class (:func:`class_images`, or the 90% / 10% split of
:func:`held_out_split`), the presets, the pixel baselines (:data:`BASELINES`), a Con2 fit
scored by both scorers on one set of embeddings (:func:`run_con2`), per-anomaly AUROC
and the share of normal images a threshold rule flags.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from con2 import Con2Detector, GaussianScorer, NearestNeighborScorer
from con2.datasets import load_fashion_mnist

PRESETS = {
    # The whole table (10 classes x 4 trainings x 2 seeds) in 41 minutes on 2 CPU
    # cores: width 8, 5 epochs of batch 128 on 2000 of the 6000 training images, 8 views.
    "cpu": dict(base_width=8, n_epochs=5, batch_size=128, n_test_augmentations=8),
    # All 6000 training images, width 8, 8 epochs of batch 256, 8 views: about 2 minutes
    # of training per class on 2 CPU cores.
    "cpu-6000": dict(base_width=8, n_epochs=8, batch_size=256, n_test_augmentations=8),
    # Chosen by the factor study (frontier.py, README "Where a CPU budget is best spent"):
    # at equal compute, batches of 64 beat 128 and 256 on every class studied, width 16
    # and a second context did not pay, and 16 test-time views score within 0.6 points
    # of 40. 65 epochs of batch 64 are 20 minutes of training per class on 2 CPU threads
    # (epochs_for("cpu-frontier", 20), priced by results/cost-cpu-frontier.json).
    "cpu-frontier": dict(base_width=8, n_epochs=65, batch_size=64, n_test_augmentations=16),
    # The paper's budget [appendix E]: ResNet18, 2048 epochs, batch 512, A = 40.
    "gpu": dict(base_width=64, n_epochs=2048, batch_size=512, n_test_augmentations=40),
}
# Training images per class of each preset: a fixed random subset, or None for all.
PRESET_N_TRAIN = {"cpu": 2000, "cpu-6000": None, "cpu-frontier": None, "gpu": None}
# The row of results/cost-cpu-frontier.json that prices one epoch of a preset, for
# budgets in minutes (a training budget per class on 2 CPU threads instead of epochs).
PRESET_COST_ROW = {"cpu-6000": "w8", "cpu-frontier": "w8 b64"}
RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = {
    "IsolationForest": lambda seed: IsolationForest(random_state=seed),
    "OneClassSVM": lambda seed: OneClassSVM(gamma="scale", nu=0.1),
    "LOF": lambda seed: LocalOutlierFactor(novelty=True),
}
# The detector of hard_classes.py, which probe.py trains again to look inside it.
HELD_OUT_SETTINGS = dict(base_width=8, n_epochs=8, batch_size=256, n_test_augmentations=16,
                         scorer="lh", random_state=0)  # fmt: skip
HELD_OUT_CONTEXTS = ("vflip", "invert")
NOMINAL_RATES = (0.01, 0.05, 0.1)


def epochs_for(preset: str, minutes: float, costs: Path | None = None,
               precision: str = "float32") -> int:  # fmt: skip
    """Epochs of all 6000 images of a class that ``minutes`` of 2 CPU threads buy.

    Priced by the measured seconds per epoch of the preset's row in
    ``results/cost-cpu-frontier.json`` (``cost.py --group frontier``). A bfloat16 epoch
    costs that times the ratio of bfloat16 to float32 measured side by side in
    ``results/cost-cpu-precision.json`` (``cost.py --group precision``).
    """
    results = costs or RESULTS / "cost-cpu-frontier.json"
    row = PRESET_COST_ROW[preset]
    per_epoch = json.loads(results.read_text())["rows"][row]["seconds_per_epoch_6000"]
    if precision == "bfloat16":
        pair = json.loads((results.parent / "cost-cpu-precision.json").read_text())["rows"]
        ratio = pair[f"{row} bf16"]["seconds_per_epoch_6000"]
        per_epoch *= ratio / pair[row]["seconds_per_epoch_6000"]
    return max(1, round(60 * minutes / per_epoch))


@functools.lru_cache(maxsize=2)
def fashion_mnist(data=None):
    """Read the Fashion-MNIST arrays (from ``data``, a folder of IDX files), once per process."""
    return load_fashion_mnist(data)


def class_images(X_train_all, y_train, cls: int, n_train=None):
    """Return the training images of a class (a fixed random subset of ``n_train``, if given)."""
    normal = X_train_all[y_train == cls]
    if n_train is not None:
        normal = normal[np.random.default_rng(0).permutation(len(normal))[:n_train]]
    return normal


def held_out_split(X_class: np.ndarray) -> tuple:
    """Split a class's training images: 90% to train on, 10% held out (fixed at random)."""
    order = np.random.default_rng(0).permutation(len(X_class))
    cut = int(0.9 * len(X_class))
    return X_class[order[:cut]], X_class[order[cut:]]


def fit_quietly(det, X) -> float:
    """Fit ``det`` on ``X`` without the context warnings; return the seconds it took.

    The benchmarks check contexts with ``check_context`` and report it themselves.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        started = time.perf_counter()
        det.fit(X)
        return time.perf_counter() - started


def embed(det, X) -> torch.Tensor:
    """Embeddings of every test-time view of ``X``: what the scorers fit and score."""
    return torch.from_numpy(det.embed(X, views="all"))


def run_baselines(normal, pixels_test, is_normal, seed) -> dict:
    """AUROC of each pixel-space baseline fitted on the normal images (pixels in [0, 1])."""
    pixels = normal.reshape(len(normal), -1) / 255.0
    return {
        name: roc_auc_score(is_normal, make(seed).fit(pixels).score_samples(pixels_test))
        for name, make in BASELINES.items()
    }


def run_con2(X_train, X_test, is_normal, context, settings, seed, view_counts=(), labels=None,
             own_scorer=None, checkpoint=None):  # fmt: skip
    """Fit Con2 once and return AUROCs of both scorers and the fit time.

    Both scorers see the same encoder and the same test-time views: the fitted ``nnd``
    scorer as ``score_samples`` uses it (training images recognised and left out), and a
    Gaussian scorer fitted on the same training embeddings. One embedding pass of the
    test set serves both (``embed(views="all")``, then the scorers themselves).

    ``settings`` may name an ``objective`` (with ``context=None`` for those without a
    context term) and a ``precision``; without one a fit trains in float32, the
    arithmetic of every table made before precision was a parameter (the detector's
    ``"auto"`` would pick bfloat16 on some CPUs and mix two kinds of fit in one table).
    ``own_scorer`` (a scorer object: CSI's score, FIRM's 5 nearest neighbours) fits the
    detector instead of ``nnd``; its AUROC (``score_samples``) is recorded as ``"own"``.
    ``threads``: the CPU threads torch trained with (1 on a worker of ``--dask local``),
    of which ``fit_seconds`` are the seconds.

    ``settings`` may hold ``image_size``: both image sets are then resized to it first
    (bilinear, antialiased). Each count in ``view_counts`` below the fit's
    ``n_test_augmentations`` is also scored, with that many of the fitted views (the
    first of each context), under the key ``f"views={count}"``. With the test images'
    class ``labels``, ``per_anomaly`` holds each scorer's AUROC of the normal test images
    against each anomaly class alone (which anomalies a fit misses).

    ``checkpoint``: a file the fit saves its training state to after every epoch, and
    resumes from if a killed run left one (the same state as an uninterrupted fit, so the
    same AUROCs). ``train_seconds`` is the sum of the fit's epoch times, across the
    processes that trained it; a resumed fit is marked ``resumed``, and its
    ``fit_seconds`` counts only the last process (``_harness.measured_seconds``).
    """
    settings = {"precision": "float32", **settings}
    if checkpoint is not None:
        settings.update(checkpoint_path=checkpoint, checkpoint_every=1)
    resumed = checkpoint is not None and Path(checkpoint).is_file()  # a killed run's
    size = settings.pop("image_size", None)
    if size is not None:
        X_train, X_test = resize(X_train, size), resize(X_test, size)
    det = Con2Detector(context=context, scorer=own_scorer or "nnd", random_state=seed,
                       **settings)  # fmt: skip
    fit_seconds = fit_quietly(det, X_train)  # context warnings: check_context reports them
    z_train, z_test = embed(det, X_train), embed(det, X_test)
    exclude = torch.from_numpy(det.find_training_images(X_test))

    def aurocs(views, calibration=False):
        nnd = NearestNeighborScorer().fit(z_train[views])
        lh = GaussianScorer().fit(z_train[views])
        tests = {"nnd": nnd.score_samples(z_test[views], exclude).cpu().numpy(),
                 "lh": lh.score_samples(z_test[views], exclude).cpu().numpy()}  # fmt: skip
        found = {name: roc_auc_score(is_normal, scores) for name, scores in tests.items()}
        if calibration and labels is not None:
            found["per_anomaly"] = {name: per_anomaly(is_normal, labels, scores)
                                    for name, scores in tests.items()}  # fmt: skip
        if calibration:
            everyone = torch.arange(z_train.shape[1])
            found["fpr"] = false_positive_rates(is_normal, tests, {
                "nnd leave-one-out": ("nnd", nnd.score_samples(z_train[views], everyone)),
                "lh in-sample": ("lh", lh.score_samples(z_train[views])),
                "lh leave-one-out": ("lh", lh.score_samples(z_train[views], everyone)),
            })  # fmt: skip
        return found

    steps = det.n_epochs * (len(X_train) // min(det.batch_size, len(X_train)))
    result = {**aurocs(slice(None), calibration=True), "fit_seconds": fit_seconds,
              "train_seconds": float(sum(det.epoch_seconds_)), "n_steps": steps,
              "threads": torch.get_num_threads()}  # fmt: skip
    if resumed:
        result["resumed"] = True
    if own_scorer is not None:
        own = det.score_samples(X_test)
        result["own"] = roc_auc_score(is_normal, own)
        if labels is not None:
            result["per_anomaly"]["own"] = per_anomaly(is_normal, labels, own)
    for count in view_counts:
        if count < len(det.views_):
            result[f"views={count}"] = aurocs(balanced_views(det.views_.view_contexts, count))
    return result


def per_anomaly(is_normal, labels, scores) -> dict:
    """AUROC of the normal images against each anomaly class alone, keyed by class."""
    normal = scores[is_normal == 1]
    return {str(k): roc_auc_score(np.r_[np.ones(len(normal)), -np.ones(np.sum(labels == k))],
                                  np.r_[normal, scores[labels == k]])
            for k in np.unique(labels[is_normal != 1])}  # fmt: skip


def flagged(threshold_scores, scores) -> dict:
    """Share of ``scores`` below the c-quantile of ``threshold_scores``, per nominal rate c.

    The threshold at rate c is what ``contamination=c`` sets ``offset_`` to from those
    scores; lower scores are more abnormal.
    """
    return {str(c): float(np.mean(scores < np.percentile(threshold_scores, 100 * c)))
            for c in NOMINAL_RATES}  # fmt: skip


def false_positive_rates(is_normal, test_scores: dict, rules: dict) -> dict:
    """Share of the normal test images each threshold rule flags, at each nominal rate.

    A rule is (scorer, training scores): its thresholds come from those training scores
    (:func:`flagged`).
    """
    return {rule: flagged(train_scores.cpu().numpy(), test_scores[scorer][is_normal == 1])
            for rule, (scorer, train_scores) in rules.items()}  # fmt: skip


def balanced_views(view_contexts, count: int):
    """Return ``count`` view indices, the first views of each context in equal shares."""
    n_contexts = int(view_contexts.max()) + 1
    per_context = count // n_contexts
    return torch.cat([torch.nonzero(view_contexts == k)[:per_context, 0]
                      for k in range(n_contexts)])  # fmt: skip


def resize(X: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images (n, H, W) to floats in [0, 1] of shape (n, size, size)."""
    x = torch.from_numpy(X).float().div_(255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)  # fmt: skip
    return x.clamp_(0.0, 1.0)[:, 0].numpy()
