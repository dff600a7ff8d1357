"""Do thresholds hold on unseen normal images? False-positive rates per threshold rule.

For each Fashion-MNIST class, the class's 6000 training images are shuffled (seed 0) into
a training part (2000), and 1000 further images of the training distribution that no
model sees ("held-out training normals"). Two fits per class:

- **all**: trained on the 2000 images. Thresholds from their scores: in-sample (the
  Gaussian's old rule), leave-one-out (``nnd`` always; ``lh`` since this benchmark).
- **split**: trained on 1600 of them; the other 400 are a calibration set neither the
  encoder nor the scorer has seen (``calibration_size=0.2``).

Each threshold is the c-quantile of its scores (``contamination=c``); the table gives the
share of the class's 1000 test images (unseen normals) it flags, and the same on the
held-out training normals. A rule that holds on held-out training normals but not on the
test images points at a difference between Fashion-MNIST's training and test images
that no calibration on training images can see.

    python benchmarks/calibration.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _harness import (
    ALL_CLASSES,
    ResultsFile,
    add_options,
    command_line,
    command_lines,
    parse_options,
    render_block,
    run_header,
)
from _protocol import NOMINAL_RATES, embed, fashion_mnist, fit_quietly, flagged
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector, GaussianScorer, NearestNeighborScorer
from con2.datasets import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parent
SETTINGS = dict(
    context="vflip", base_width=8, n_epochs=5, batch_size=128, n_test_augmentations=8
)  # fmt: skip  (shared/notes/thresholds-measured.md)


def fit_and_embed(X_train, others: dict, seed: int, settings: dict):
    # float32 unless the settings say otherwise: the arithmetic of the committed table
    det = Con2Detector(random_state=seed, **{"precision": "float32", **settings})
    fit_quietly(det, X_train)
    return {"train": embed(det, X_train), **{k: embed(det, X) for k, X in others.items()}}


def rates(threshold_scores, scores_by_set: dict) -> dict:
    """Share of each set below the c-quantile of ``threshold_scores``, per nominal c."""
    return {name: flagged(threshold_scores, scores) for name, scores in scores_by_set.items()}


def run_class(cls, X_class, X_test, is_normal, seed, settings) -> dict:
    order = np.random.default_rng(0).permutation(len(X_class))
    train, held = X_class[order[:2000]], X_class[order[2000:3000]]
    result = {}
    z = fit_and_embed(train, {"test": X_test, "held": held}, seed, settings)
    everyone = torch.arange(2000)
    for name, scorer in (("nnd", NearestNeighborScorer()), ("lh", GaussianScorer())):
        scorer.fit(z["train"])
        test, held_scores = (scorer.score_samples(z[k]).numpy() for k in ("test", "held"))
        sets = {"test": test[is_normal == 1], "held": held_scores}
        result[f"{name} auroc all"] = roc_auc_score(is_normal, test)
        result[f"{name} leave-one-out"] = rates(scorer.score_samples(z["train"], everyone).numpy(),
                                                sets)  # fmt: skip
        if name == "lh":
            result["lh in-sample"] = rates(scorer.score_samples(z["train"]).numpy(), sets)
    z = fit_and_embed(train[:1600], {"test": X_test, "held": held, "calib": train[1600:]},
                      seed, settings)  # fmt: skip
    for name, scorer in (("nnd", NearestNeighborScorer()), ("lh", GaussianScorer())):
        scorer.fit(z["train"])
        test, held_scores, calib = (scorer.score_samples(z[k]).numpy()
                                    for k in ("test", "held", "calib"))  # fmt: skip
        result[f"{name} auroc split"] = roc_auc_score(is_normal, test)
        result[f"{name} split"] = rates(calib, {"test": test[is_normal == 1], "held": held_scores})
    return result


def main(classes: tuple = ALL_CLASSES, seed: int = 0, data: str | None = None,
         out: str | None = None, write_readme: bool = False,
         precision: str = "float32") -> dict:  # fmt: skip
    """Run the classes the results file does not hold yet; return (and save) all of it.

    ``precision`` other than float32 trains in it, into ``calibration-cpu-<precision>``.
    """
    settings = {**SETTINGS, **({"precision": precision} if precision != "float32" else {})}
    name = "calibration-cpu" + ("" if precision == "float32" else f"-{precision}")
    out_path = Path(out) if out else ROOT / "results" / f"{name}.json"
    results = ResultsFile(out_path, {"settings": settings, "seed": seed}, rows="dict")
    results.start_run(command_line("calibration.py", ("--classes", classes), ("--seed", seed),
                                   ("--precision", None if precision == "float32" else
                                    precision)))  # fmt: skip
    for cls in classes:
        if results.has(cls):
            continue
        started = time.perf_counter()
        X_train, y_train, X_test, y_test = fashion_mnist(data)
        is_normal = np.where(y_test == cls, 1, -1)
        row = run_class(cls, X_train[y_train == cls], X_test, is_normal, seed, settings)
        results.add(cls, None, row)  # one class at a time
        print(f"class {cls}: lh in-sample {row['lh in-sample']['test']}, lh leave-one-out "
              f"{row['lh leave-one-out']['test']} ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
    final = results.finish()
    if write_readme:
        render_block(ROOT / "README.md", name, readme_text(final))
    return final


RULES = ("nnd leave-one-out", "nnd split", "lh in-sample", "lh leave-one-out", "lh split")


def readme_text(results) -> str:
    rows = results["rows"]
    lines = [
        f"{run_header(results)}; "
        f"{', '.join(f'{k}={v}' for k, v in results['settings'].items())}, seed "
        f"{results['seed']}; {len(rows)} classes. Share of unseen normal images flagged, "
        "mean over classes (ratio to the nominal rate in brackets).",
        "",
        *command_lines(results),
        "",
        "| threshold rule | images | " + " | ".join(f"c = {c}" for c in NOMINAL_RATES) + " |",
        "|---|---|" + "---|" * len(NOMINAL_RATES),
    ]
    for rule in RULES:
        for where, label in (("test", "test set"), ("held", "held-out training")):
            cells = []
            for c in NOMINAL_RATES:
                mean = np.mean([row[rule][where][str(c)] for row in rows.values()])
                cells.append(f"{mean:.3f} ({mean / c:.2f})")
            lines.append(f"| {rule} | {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "AUROC (%) with all 2000 training images and with 1600 (400 set aside):",
        "",
        "| class | nnd all | nnd split | lh all | lh split |",
        "|---|---|---|---|---|",
    ]
    for cls, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[int(cls)]} | " + " | ".join(
            f"{100 * row[k]:.1f}" for k in ("nnd auroc all", "nnd auroc split",
                                            "lh auroc all", "lh auroc split")) + " |")  # fmt: skip
    means = [np.mean([row[k] for row in rows.values()]) for k in
             ("nnd auroc all", "nnd auroc split", "lh auroc all", "lh auroc split")]  # fmt: skip
    lines.append("| **mean** | " + " | ".join(f"{100 * m:.1f}" for m in means) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, "classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    add_options(parser, "data", "out", "write-readme")
    main(**parse_options(parser))
