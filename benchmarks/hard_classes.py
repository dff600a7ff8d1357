"""Which context suits which class, and can the training images alone tell which.

For every Fashion-MNIST class and each context (vflip, invert), a detector is trained on
90% of the class's training images (a fixed random split); the other 10% are held-out
normals. Recorded per (class, context):

- AUROC on the whole test set, and per anomaly class (which anomalies a context misses);
- AUROC of the mean of both contexts' scores, each standardised by its own calibration
  scores (``combined``: a label-free way to use both trained models);
- label-free criteria, computed from the training images only, each a candidate for
  choosing the context without anomalies:
  ``context_accuracy``: how often a held-out normal's views are told apart by context
  (nearest context centroid of the training views in the context head's space);
  ``content_loss``: the content-alignment loss on the held-out normals' views (how well
  the two contexts of unseen normals are aligned; lower is better);
  ``synthetic_auroc``: AUROC of held-out normals against the same images under changes
  that are neither context (rotated a quarter turn, blurred, with a bright band), a
  stand-in for anomalies (higher is better).
- pixel statistics of the normal class and of each anomaly class (mean intensity, share
  of dark pixels, top-bottom asymmetry), to explain what a context can and cannot see.

Results go to ``results/hard-classes.json``, one (class, context) at a time; the same
command continues an interrupted run.

    python benchmarks/hard_classes.py
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from oneclass import git_commit, hardware, render_block
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2._input import to_float, validate_images
from con2._training import make_views, view_keys
from con2.augment import KeyedRandom
from con2.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from con2.losses import supcon_loss

ROOT = Path(__file__).resolve().parent
SETTINGS = dict(base_width=8, n_epochs=8, batch_size=256, n_test_augmentations=16,
                scorer="lh", random_state=0)  # fmt: skip
CONTEXTS = ("vflip", "invert")
CRITERIA = {
    "context_accuracy": 1,
    "content_loss": -1,
    "synthetic_auroc": 1,
}  # sign: higher is better


def synthetic_anomalies(x: np.ndarray) -> np.ndarray:
    """Held-out normals changed in ways that are neither context: rotation, blur, a band."""
    rotated = np.rot90(x, 1, axes=(1, 2))
    t = torch.from_numpy(x[:, None].astype(np.float32))
    blurred = F.avg_pool2d(t, 5, stride=1, padding=2).numpy()[:, 0].astype(np.uint8)
    banded = x.copy()
    banded[:, 10:14] = 255
    return np.concatenate([rotated, blurred, banded])


def criteria(det, held: np.ndarray) -> dict:
    """Measure the label-free criteria of a fitted detector on held-out normals."""
    images = to_float(validate_images(det, held, reset=False))
    keys = view_keys(1, 0, torch.arange(len(held)), len(det.contexts_) + 1)
    views, contexts, instances = make_views(images, det.contexts_, det.views_.augment,
                                            KeyedRandom(keys))  # fmt: skip
    det.encoder_.eval()
    with torch.no_grad():
        z_context, z_content = det.encoder_(views)
        content = float(supcon_loss(z_content, instances, det.temperature))
        centroids = torch.stack([z_context[contexts == k].mean(0) for k in (0, 1)])
        predicted = (z_context @ centroids.T).argmax(1)
        accuracy = float((predicted == contexts).float().mean())
    fake = synthetic_anomalies(held)
    scores = det.score_samples(np.concatenate([held, fake]))
    truth = np.r_[np.ones(len(held)), -np.ones(len(fake))]
    return {"context_accuracy": accuracy, "content_loss": content,
            "synthetic_auroc": roc_auc_score(truth, scores)}  # fmt: skip


def pixel_statistics(X: np.ndarray) -> dict:
    x = X.astype(np.float64) / 255
    return {"mean": float(x.mean()), "dark_share": float((x < 0.1).mean()),
            "top_bottom_asymmetry": float(np.abs(x - x[:, ::-1]).mean())}  # fmt: skip


def run_pair(cls, X_class, X_test, y_test) -> dict:
    order = np.random.default_rng(0).permutation(len(X_class))
    cut = int(0.9 * len(X_class))
    train, held = X_class[order[:cut]], X_class[order[cut:]]
    is_normal = np.where(y_test == cls, 1, -1)
    row, standardised = {}, []
    for context in CONTEXTS:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            det = Con2Detector(context=context, **SETTINGS).fit(train)
        scores = det.score_samples(X_test)
        calibration = det.calibration_scores_
        standardised.append((scores - calibration.mean()) / calibration.std())
        normal = scores[y_test == cls]
        per_class = {
            str(k): roc_auc_score(np.r_[np.ones(len(normal)), -np.ones((y_test == k).sum())],
                                  np.r_[normal, scores[y_test == k]])
            for k in range(10) if k != cls
        }  # fmt: skip
        row[context] = {
            "auroc": roc_auc_score(is_normal, scores), "per_anomaly": per_class,
            **criteria(det, held), "fit_seconds": time.perf_counter() - started,
        }  # fmt: skip
    row["combined"] = {"auroc": roc_auc_score(is_normal, np.mean(standardised, axis=0))}
    return row


def main(classes: tuple = tuple(range(10)), data: str | None = None, out: str | None = None,
         write_readme: bool = False) -> dict:  # fmt: skip
    X_train, y_train, X_test, y_test = load_fashion_mnist(data)
    path = Path(out) if out else ROOT / "results" / "hard-classes.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    results.update(
        hardware=hardware(), commit=git_commit(), settings=SETTINGS,
        command=f"python benchmarks/hard_classes.py --classes {' '.join(map(str, classes))}",
        pixels={str(k): pixel_statistics(X_train[y_train == k]) for k in range(10)},
    )  # fmt: skip
    for cls in classes:
        if str(cls) in results["rows"]:
            continue
        results["rows"][str(cls)] = run_pair(cls, X_train[y_train == cls], X_test, y_test)
        path.write_text(json.dumps(results, indent=1))
        row = results["rows"][str(cls)]
        print(f"class {cls}: " + ", ".join(f"{c} {row[c]['auroc']:.3f}" for c in
                                           (*CONTEXTS, "combined")), flush=True)  # fmt: skip
    if write_readme:
        render_block(ROOT / "README.md", "hard-classes", readme_text(results))
    return results


def hit_rates(rows: dict) -> dict:
    """Count, per criterion, the classes where it picks the context with the higher AUROC."""
    rates = {}
    for name, sign in CRITERIA.items():
        hits = [
            max(CONTEXTS, key=lambda c: sign * row[c][name])
            == max(CONTEXTS, key=lambda c: row[c]["auroc"])
            for row in rows.values()
        ]
        rates[name] = (sum(hits), len(hits))
    return rates


def readme_text(results) -> str:
    rows = results["rows"]
    lines = [
        f"Code at commit {results['commit']}, {results['hardware']}; "
        f"{', '.join(f'{k}={v}' for k, v in results['settings'].items())}; 90% of each "
        "class's training images for training, 10% held out. AUROC in %.",
        "",
        f"    {results['command']}",
        "",
        "| class | vflip | invert | both, scores combined | better context | "
        "context accuracy (vflip / invert) | content loss | synthetic AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cls, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        v, i = row["vflip"], row["invert"]
        better = "vflip" if v["auroc"] >= i["auroc"] else "invert"
        lines.append(
            f"| {cls} {FASHION_MNIST_CLASSES[int(cls)]} | {100 * v['auroc']:.1f} | "
            f"{100 * i['auroc']:.1f} | {100 * row['combined']['auroc']:.1f} | {better} | "
            f"{v['context_accuracy']:.3f} / {i['context_accuracy']:.3f} | "
            f"{v['content_loss']:.3f} / {i['content_loss']:.3f} | "
            f"{100 * v['synthetic_auroc']:.1f} / {100 * i['synthetic_auroc']:.1f} |"
        )
    means = [np.mean([row[k]["auroc"] for row in rows.values()]) for k in (*CONTEXTS, "combined")]
    lines.append("| **mean** | " + " | ".join(f"{100 * m:.1f}" for m in means) + " | | | | |")
    rates = hit_rates(rows)
    lines += ["", "Classes on which each criterion picks the context with the higher AUROC: "
              + ", ".join(f"{k} {h} of {n}" for k, (h, n) in rates.items()) + "."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    main(tuple(args.classes), args.data, args.out, args.write_readme)
