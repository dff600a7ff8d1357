"""Whether an anomaly class a detector misses is lost by its embedding or by its scorer.

For a normal class and each context (vflip, invert), a detector is trained exactly as in
``hard_classes.py`` (the same settings and the same 90% of the class's training images:
``_protocol.HELD_OUT_SETTINGS`` and ``held_out_split``).
Then, per anomaly class of the test set, against the class's normal test images:

- ``lh``, ``nnd``: AUROC of the one-class scores (the Gaussian and the nearest-neighbour
  scorer, fitted on the same training embeddings);
- ``probe``: AUROC of a linear probe on the embeddings (the mean over the test-time views,
  what both scorers see), a logistic regression trained *with the labels* of the two
  classes and cross-validated over 5 folds of their test images: whether the
  representation separates the two at all;
- per normal class, once: ``pixel_probe``, the same probe on the raw pixels, and
  ``isolation_forest``, IsolationForest on the pixels of the same training images.

An anomaly class that the probe separates and the scores miss is lost by one-class
scoring (its images lie where the normal class's are dense), not by the representation.
The probe is a diagnostic that uses anomaly labels, never a detector.

Results go to ``results/probe.json`` as each (class, context) finishes; the same command
continues an interrupted run.

    python benchmarks/probe.py --classes 5 6 --write-readme
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _harness import (
    ResultsFile,
    add_options,
    code_at,
    command_line,
    command_lines,
    parse_options,
    render_block,
)
from _protocol import HELD_OUT_CONTEXTS as CONTEXTS
from _protocol import HELD_OUT_SETTINGS as SETTINGS
from _protocol import embed, fashion_mnist, fit_quietly, held_out_split, per_anomaly
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from con2 import Con2Detector, GaussianScorer, NearestNeighborScorer
from con2.datasets import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parent
N_FOLDS = 5


def probe_aurocs(features: np.ndarray, is_normal: np.ndarray, labels: np.ndarray) -> dict:
    """Cross-validated AUROC of a linear probe: the normal images against each anomaly class."""
    found = {}
    for k in np.unique(labels[is_normal != 1]):
        pair = (is_normal == 1) | (labels == k)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        folds = StratifiedKFold(N_FOLDS, shuffle=True, random_state=0)
        found[str(k)] = float(np.mean(cross_val_score(
            probe, features[pair], is_normal[pair], cv=folds, scoring="roc_auc")))  # fmt: skip
    return found


def fit_context(cls: int, context: str, data) -> dict:
    """Train one detector and compare its scores with a probe on its embeddings."""
    X_train, y_train, X_test, y_test = fashion_mnist(data)
    train, _ = held_out_split(X_train[y_train == cls])
    is_normal = np.where(y_test == cls, 1, -1)
    det = Con2Detector(context=context, precision="float32", **SETTINGS)  # as hard_classes.py
    fit_seconds = fit_quietly(det, train)
    z_train, z_test = embed(det, train), embed(det, X_test)
    scorers = {"lh": GaussianScorer(), "nnd": NearestNeighborScorer()}
    scores = {name: scorer.fit(z_train).score_samples(z_test).cpu().numpy()
              for name, scorer in scorers.items()}  # fmt: skip
    return {
        **{name: per_anomaly(is_normal, y_test, s) for name, s in scores.items()},
        "probe": probe_aurocs(z_test.mean(0).cpu().numpy(), is_normal, y_test),
        "embed_dim": int(z_test.shape[2]),
        "fit_seconds": fit_seconds,
    }


def pixel_record(cls: int, data) -> dict:
    """Run the probe and IsolationForest on raw pixels, per anomaly class."""
    X_train, y_train, X_test, y_test = fashion_mnist(data)
    train, _ = held_out_split(X_train[y_train == cls])
    is_normal = np.where(y_test == cls, 1, -1)
    pixels = X_test.reshape(len(X_test), -1) / 255.0
    forest = IsolationForest(random_state=0).fit(train.reshape(len(train), -1) / 255.0)
    return {"pixel_probe": probe_aurocs(pixels, is_normal, y_test),
            "isolation_forest": per_anomaly(is_normal, y_test,
                                            forest.score_samples(pixels))}  # fmt: skip


def main(classes: tuple = (5, 6), data: str | None = None, out: str | None = None,
         write_readme: bool = False) -> dict:  # fmt: skip
    """Run what the results file does not hold yet; return (and save) all its results."""
    path = Path(out) if out else ROOT / "results" / "probe.json"
    results = ResultsFile(path, {"settings": SETTINGS}, rows="dict")
    results.start_run(command_line("probe.py", ("--classes", classes)))
    for cls in classes:
        for part in ("pixels", *CONTEXTS):
            if results.has(cls, part):
                continue
            record = pixel_record(cls, data) if part == "pixels" else fit_context(cls, part, data)
            results.add(cls, part, record)
            if part != "pixels":
                missed = min(record["lh"], key=record["lh"].get)
                print(f"class {cls} {part}: worst anomaly class {missed} (lh "
                      f"{record['lh'][missed]:.3f}, probe {record['probe'][missed]:.3f}); "
                      f"{record['fit_seconds']:.0f} s fit", flush=True)  # fmt: skip
    final = results.finish()
    if write_readme:
        render_block(ROOT / "README.md", "probe", readme_text(final))
    return final


def readme_text(results) -> str:
    lines = [
        f"{code_at(results).replace('code', 'Code', 1)}, {results['hardware']}; the settings "
        "and split of "
        f"`hard_classes.py` ({', '.join(f'{k}={v}' for k, v in results['settings'].items())}). "
        f"AUROC in % of the normal test images against each anomaly class; the probes are "
        f"{N_FOLDS}-fold cross-validated logistic regressions trained with the labels.",
        "",
        *command_lines(results),
    ]
    for cls, row in sorted(results["rows"].items(), key=lambda kv: int(kv[0])):
        done = [c for c in CONTEXTS if c in row]
        if "pixels" not in row or not done:
            continue
        header = " | ".join(f"{c} {m}" for c in done for m in ("lh", "nnd", "probe"))
        lines += ["", f"Normal class {cls} {FASHION_MNIST_CLASSES[int(cls)]}:", "",
                  f"| anomaly class | {header} | pixel probe | IsolationForest |",
                  "|---" * (3 * len(done) + 3) + "|"]  # fmt: skip
        for k in sorted(row["pixels"]["pixel_probe"], key=int):
            cells = [row[c][m][k] for c in done for m in ("lh", "nnd", "probe")]
            cells += [row["pixels"]["pixel_probe"][k], row["pixels"]["isolation_forest"][k]]
            lines.append(f"| {k} {FASHION_MNIST_CLASSES[int(k)]} | "
                         + " | ".join(f"{100 * v:.1f}" for v in cells) + " |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, "classes", "data", "out", "write-readme", classes=(5, 6))
    main(**parse_options(parser))
