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
- pixel statistics of every class (mean intensity, share of dark pixels, top-bottom
  asymmetry, and ``intensity_auroc``: the AUROC of the one-number detector "closeness of
  an image's mean intensity to the class's"), and ``intensity_rho``, the Spearman correlation
  over the test set between a fit's scores and how close an image's mean intensity is to
  the normal class's: how much of what the scores see is the amount of bright material,
  to explain what a context can and cannot see.

Results go to ``results/hard-classes.json``, one (class, context) fit at a time (a fit's
standardised test scores wait in ``results/hard-classes.partial/`` until the class's other
context is done); the same command continues an interrupted run. ``--dask local`` runs
one single-threaded fit per CPU at once (``_harness.fan_out``). The detector's settings
and the split are ``_protocol``'s (``HELD_OUT_SETTINGS``, ``held_out_split``), which
``probe.py`` shares.

    python benchmarks/hard_classes.py --dask local
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _harness import (
    ALL_CLASSES,
    Eta,
    ResultsFile,
    add_options,
    code_at,
    command_line,
    command_lines,
    fan_out,
    parallel_fits,
    parse_options,
    render_block,
)
from _protocol import HELD_OUT_CONTEXTS as CONTEXTS
from _protocol import HELD_OUT_SETTINGS as SETTINGS
from _protocol import fashion_mnist, fit_quietly, held_out_split, per_anomaly
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2.datasets import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parent
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
    # training-like views of the held-out images, and the objective's own content term
    projections, contexts, instances = det.project(held, random_state=1)
    content = float(det.objective_.terms(projections, contexts, instances)["content"])
    z_context = projections["context"]
    centroids = torch.stack([z_context[contexts == k].mean(0) for k in (0, 1)])
    predicted = (z_context @ centroids.T).argmax(1)
    accuracy = float((predicted == contexts).float().mean())
    fake = synthetic_anomalies(held)
    scores = det.score_samples(np.concatenate([held, fake]))
    truth = np.r_[np.ones(len(held)), -np.ones(len(fake))]
    return {"context_accuracy": accuracy, "content_loss": content,
            "synthetic_auroc": roc_auc_score(truth, scores)}  # fmt: skip


def intensity_closeness(X: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image of ``X``: minus the gap between its mean intensity and ``reference``'s."""
    return -np.abs(X.reshape(len(X), -1).mean(1) / 255 - reference.mean() / 255)


def pixel_statistics(X: np.ndarray, X_test: np.ndarray, is_normal: np.ndarray) -> dict:
    x = X.astype(np.float64) / 255
    closeness = intensity_closeness(X_test, X)
    return {"mean": float(x.mean()), "dark_share": float((x < 0.1).mean()),
            "top_bottom_asymmetry": float(np.abs(x - x[:, ::-1]).mean()),
            "intensity_auroc": roc_auc_score(is_normal, closeness)}  # fmt: skip


def pixel_table(data) -> dict:
    """Pixel statistics of every class (see :func:`pixel_statistics`), keyed by class."""
    X_train, y_train, X_test, y_test = fashion_mnist(data)
    return {str(k): pixel_statistics(X_train[y_train == k], X_test, y_test == k)
            for k in np.unique(y_train)}  # fmt: skip


def fit_context(cls: int, context: str, data) -> tuple:
    """One fit: its record and its test scores standardised by its calibration scores."""
    X_train, y_train, X_test, y_test = fashion_mnist(data)
    train, held = held_out_split(X_train[y_train == cls])
    started = time.perf_counter()
    det = Con2Detector(context=context, precision="float32", **SETTINGS)  # as the committed table
    fit_quietly(det, train)
    scores = det.score_samples(X_test)
    calibration = det.calibration_scores_
    standardised = (scores - calibration.mean()) / calibration.std()
    is_normal = np.where(y_test == cls, 1, -1)
    record = {
        "auroc": roc_auc_score(is_normal, scores),
        "per_anomaly": per_anomaly(is_normal, y_test, scores), **criteria(det, held),
        "intensity_rho": float(spearmanr(scores, intensity_closeness(X_test, train)).statistic),
        "fit_seconds": time.perf_counter() - started,  # scoring and criteria included
    }  # fmt: skip
    return record, standardised


def main(classes: tuple = ALL_CLASSES, data: str | None = None, out: str | None = None,
         write_readme: bool = False, dask: str | None = None) -> dict:  # fmt: skip
    """Run the fits the results file does not hold yet; return (and save) all its results.

    ``dask``: fan the fits out over a Dask cluster (``"local"``: one single-threaded
    worker per CPU; see ``_harness.fan_out``).
    """
    path = Path(out) if out else ROOT / "results" / "hard-classes.json"
    partial = path.with_name(f"{path.stem}.partial")
    results = ResultsFile(path, {"settings": SETTINGS}, rows="dict")
    todo = [(cls, c) for cls in classes for c in CONTEXTS if not results.has(cls, c)]
    print(f"{len(classes) * len(CONTEXTS) - len(todo)} of {len(classes) * len(CONTEXTS)} "
          f"fits already in {path}; {len(todo)} to run", flush=True)  # fmt: skip
    results.start_run(command_line("hard_classes.py", ("--classes", classes)))
    if todo:
        results.data["pixels"] = pixel_table(data)
    clock = Eta(todo, parallel_fits(dask))
    for i, fitted in fan_out(fit_context, [(*unit, data) for unit in todo], dask):
        row = store(results, partial, todo[i], fitted, data)
        cls, context = todo[i]
        print(f"class {cls} {context}: AUROC {fitted[0]['auroc']:.3f}"
              + (f", combined {row['combined']['auroc']:.3f}" if "combined" in row else "")
              + f"; {clock.tick(context, fitted[0]['fit_seconds'])}", flush=True)  # fmt: skip
    if partial.exists() and not any(partial.iterdir()):
        partial.rmdir()
    final = results.finish()
    if write_readme:
        render_block(ROOT / "README.md", "hard-classes", readme_text(final))
    return final


def store(results: ResultsFile, partial: Path, unit: tuple, fitted: tuple, data) -> dict:
    """Save one fit; once both contexts of its class are in, their combined AUROC.

    A fit's standardised scores wait in ``partial`` until the other context's arrive;
    they are deleted once the combination is saved.
    """
    (cls, context), (record, standardised) = unit, fitted
    row = results.row(cls)
    row[context] = record
    partial.mkdir(exist_ok=True)
    np.save(partial / f"{cls}-{context}.npy", standardised)
    if all(c in row for c in CONTEXTS):  # both contexts: combine their scores
        combined = np.mean([np.load(partial / f"{cls}-{c}.npy") for c in CONTEXTS], axis=0)
        is_normal = np.where(fashion_mnist(data)[3] == cls, 1, -1)
        row["combined"] = {"auroc": roc_auc_score(is_normal, combined)}
    results.save()
    if "combined" in row:
        for c in CONTEXTS:
            (partial / f"{cls}-{c}.npy").unlink()
    return row


def complete(rows: dict) -> dict:
    """Keep the classes whose both contexts (and so their combination) are done."""
    return {cls: row for cls, row in rows.items() if "combined" in row}


def hit_rates(rows: dict) -> dict:
    """Count, per criterion, the classes where it picks the context with the higher AUROC."""
    rows = complete(rows)
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
    """Return the README block: per class, both contexts, their combination, the criteria."""
    rows = complete(results["rows"])
    lines = [
        f"{code_at(results).replace('code', 'Code', 1)}, {results['hardware']}; "
        f"{', '.join(f'{k}={v}' for k, v in results['settings'].items())}; 90% of each "
        "class's training images for training, 10% held out. AUROC in %.",
        "",
        *command_lines(results),
        "",
        "| class | vflip | invert | both, scores combined | better context | mean intensity "
        "alone | context accuracy (vflip / invert) | content loss | synthetic AUROC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cls, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        v, i = row["vflip"], row["invert"]
        better = "vflip" if v["auroc"] >= i["auroc"] else "invert"
        lines.append(
            f"| {cls} {FASHION_MNIST_CLASSES[int(cls)]} | {100 * v['auroc']:.1f} | "
            f"{100 * i['auroc']:.1f} | {100 * row['combined']['auroc']:.1f} | {better} | "
            f"{100 * results['pixels'][cls]['intensity_auroc']:.1f} | "
            f"{v['context_accuracy']:.3f} / {i['context_accuracy']:.3f} | "
            f"{v['content_loss']:.3f} / {i['content_loss']:.3f} | "
            f"{100 * v['synthetic_auroc']:.1f} / {100 * i['synthetic_auroc']:.1f} |"
        )
    means = [np.mean([row[k]["auroc"] for row in rows.values()]) for k in (*CONTEXTS, "combined")]
    lines.append("| **mean** | " + " | ".join(f"{100 * m:.1f}" for m in means) + " | | | | | |")
    rates = hit_rates(rows)
    fixed = {c: sum(max(CONTEXTS, key=lambda k: row[k]["auroc"]) == c for row in rows.values())
             for c in CONTEXTS}  # fmt: skip
    lines += ["", "Classes on which each criterion picks the context with the higher AUROC: "
              + ", ".join(f"{k} {h} of {n}" for k, (h, n) in rates.items()) + "; always "
              + " and always ".join(f"{c} {h} of {len(rows)}" for c, h in fixed.items())
              + "."]  # fmt: skip
    missing = [str(k) for k in range(len(FASHION_MNIST_CLASSES)) if str(k) not in rows]
    if missing:
        lines += ["", f"**Partial:** not yet run on classes {', '.join(missing)}."]
    return "\n".join([*lines, "", *anomaly_table(rows)])


def anomaly_table(rows: dict) -> list:
    """Return the lines of the per-anomaly table: AUROCs, and rho against intensity."""
    lines = ["Per anomaly class (columns), AUROC in % of vflip / invert, and the Spearman "
             "correlation of each fit's scores with closeness to the normal class's mean "
             "intensity (rho; fits made before it was recorded show -):", "",
             "| normal class | " + " | ".join(str(k) for k in range(10)) + " | rho |",
             "|---" * 12 + "|"]  # fmt: skip
    for cls, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        v, i = row["vflip"], row["invert"]
        cells = [f"{100 * v['per_anomaly'][str(k)]:.0f} / {100 * i['per_anomaly'][str(k)]:.0f}"
                 if str(k) in v["per_anomaly"] else "" for k in range(10)]  # fmt: skip
        rho = " / ".join(f"{r['intensity_rho']:.2f}" if "intensity_rho" in r else "-"
                         for r in (v, i))  # fmt: skip
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[int(cls)]} | " + " | ".join(cells)
                     + f" | {rho} |")  # fmt: skip
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, "classes", "data", "out", "write-readme", "dask")
    main(**parse_options(parser))
