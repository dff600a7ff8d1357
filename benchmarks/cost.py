"""What a fit and a scoring pass cost, measured, for a few detector settings.

On random grayscale images (28x28, the Fashion-MNIST shape, unless a setting names another
``image_size``; the content does not change the cost): a fit of ``1 + n_epochs`` epochs on
``n_train`` images, after a warm-up fit. An epoch costs the median of the fit's own
``epoch_seconds_`` after its first epoch (start-up excluded); the fixed cost of a fit
(the context check, embedding the training set, fitting the scorer) is the rest of its
wall-clock time. Then scoring ``n_score`` images. Epoch time is extrapolated to a
6000-image class and the paper's 2048 epochs. (Files written before ``epoch_seconds_``
existed took the epoch time from the difference of a 1-epoch and a longer fit.)

    python benchmarks/cost.py                    # the README's cost table
    python benchmarks/cost.py --group frontier   # the candidates of the frontier study
    python benchmarks/cost.py --group precision  # cpu-frontier in float32 and bfloat16
    python benchmarks/cost.py --group objectives  # each objective (also objectives-bfloat16)
    python benchmarks/cost.py --group objectives-outliers  # Con2 beside Con2 with outliers
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _harness import ResultsFile, add_options, command_line, parse_options

from con2 import Con2Detector, Con2Objective

ROOT = Path(__file__).resolve().parent
GROUPS = {
    "defaults": {
        "defaults (base_width=64)": dict(),
        "base_width=16": dict(base_width=16),
        "base_width=8, A=8": dict(base_width=8, n_test_augmentations=8),
    },
    # What one epoch of each candidate of benchmarks/frontier.py costs, so that its
    # levels can be set to equal compute.
    "frontier": {
        "w8": dict(base_width=8),
        "w12": dict(base_width=12),
        "w16": dict(base_width=16),
        "w8 b64": dict(base_width=8, batch_size=64),
        "w8 b128": dict(base_width=8, batch_size=128),
        "w8 b512": dict(base_width=8, batch_size=512),
        "w8 20px": dict(base_width=8, image_size=20),
        "w8 vflip+invert": dict(base_width=8, context=["vflip", "invert"]),
        "w8 b128 vflip+invert": dict(base_width=8, batch_size=128, context=["vflip", "invert"]),
        "w16 b128": dict(base_width=16, batch_size=128),
    },
    # The cpu-frontier setting in both precisions, side by side: what a minute of
    # bfloat16 buys against float32 (oneclass.py --precision bfloat16 --minutes).
    "precision": {
        "w8 b64": dict(base_width=8, batch_size=64),
        "w8 b64 bf16": dict(base_width=8, batch_size=64, precision="bfloat16"),
    },
    # One epoch of each objective in the cpu-frontier setting (objectives.py prices equal
    # minutes per class with it): CSI and FIRM see 8 views per image, Con2 4, SimCLR 2.
    "objectives": {
        "con2": dict(base_width=8, batch_size=64),
        "simclr": dict(base_width=8, batch_size=64, objective="simclr", context=None),
        "csi": dict(base_width=8, batch_size=64, objective="csi", context=None),
        "firm": dict(base_width=8, batch_size=64, objective="firm", context=None),
    },
}
# Con2 with rotations by 90 and 270 degrees as synthetic outliers (8 views per image),
# beside Con2 in the same run: objectives.py prices "con2-outliers" with it.
GROUPS["objectives-outliers"] = {
    "con2": dict(base_width=8, batch_size=64),
    "con2-outliers": dict(base_width=8, batch_size=64,
                          objective=Con2Objective(outliers=["rot90", "rot270"])),
}  # fmt: skip
# The same in bfloat16 (objectives.py --precision bfloat16 prices its epochs with it).
GROUPS["objectives-bfloat16"] = {name: {**settings, "precision": "bfloat16"}
                                 for name, settings in GROUPS["objectives"].items()}  # fmt: skip
SETTINGS = GROUPS["defaults"]


def measure(settings: dict, n_train: int, n_epochs: int, n_score: int, device: str) -> dict:
    """Seconds per training step and epoch, fixed seconds per fit, seconds to score."""
    settings = dict(settings)
    size = settings.pop("image_size", 28)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    # float32 unless a setting names a precision: the tables priced here train in float32
    det = Con2Detector(random_state=0, device=device,
                       **{"precision": "float32", **settings, "n_epochs": 1})  # fmt: skip

    def fit_seconds(epochs):
        det.set_params(n_epochs=epochs)
        start = time.perf_counter()
        det.fit(X)
        return time.perf_counter() - start

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # context checks on random images
        fit_seconds(1)  # warm-up: allocations, kernel selection
        total = fit_seconds(1 + n_epochs)
    start = time.perf_counter()
    det.score_samples(X[:n_score])
    score = time.perf_counter() - start
    per_epoch = float(np.median(det.epoch_seconds_[1:]))  # the fit's own clock
    fixed = total - sum(det.epoch_seconds_)
    per_step = per_epoch / (n_train // min(det.batch_size, n_train))
    steps_per_6000 = 6000 // det.batch_size
    return {
        "settings": {
            **{
                k: v
                for k, v in det.get_params().items()
                if k in ("base_width", "batch_size", "n_test_augmentations")
            },
            **({"image_size": size} if size != 28 else {}),
            **({"context": det.context} if det.context != "vflip" else {}),
            **({"objective": objective_name(det.objective)} if det.objective != "con2" else {}),
            **({"precision": det.precision} if det.precision != "float32" else {}),
        },
        "seconds_per_step": per_step,
        "seconds_per_epoch_6000": per_step * steps_per_6000,
        "hours_2048_epochs_6000": per_step * steps_per_6000 * 2048 / 3600,
        "fixed_seconds_per_1000_train": fixed / n_train * 1000,
        "seconds_per_1000_scored": score / n_score * 1000,
    }


def objective_name(objective) -> str:
    """Return a detector's ``objective`` for JSON: its name, or an object's repr."""
    return objective if isinstance(objective, str) else repr(objective)


def main(n_train: int = 1024, n_epochs: int = 2, n_score: int = 512, device: str = "auto",
         out: str | None = None, group: str = "defaults") -> dict:  # fmt: skip
    """Measure every setting of a group (SETTINGS by default), print a table, save JSON."""
    settings = SETTINGS if group == "defaults" else GROUPS[group]
    rows = {name: measure(s, n_train, n_epochs, n_score, device) for name, s in settings.items()}
    dev = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    suffix = "" if group == "defaults" else f"-{group}"
    path = Path(out) if out else ROOT / "results" / f"cost-{dev}{suffix}.json"
    results = ResultsFile(path, resume=False)
    results.start_run(command_line(
        "cost.py", ("--n-train", n_train), ("--n-epochs", n_epochs), ("--n-score", n_score),
        ("--device", device), ("--group", group if group != "defaults" else None),
    ), device=dev)  # fmt: skip
    results.data["rows"] = rows
    results.save()
    print_table(results.data, n_train, n_epochs)
    return results.data


def print_table(results: dict, n_train: int, n_epochs: int) -> None:
    """Print the measured costs as a Markdown table."""
    print(f"{results['hardware']}; {n_train} training images 28x28, {n_epochs} epochs timed\n")
    print("| settings | s / step | s / epoch of 6000 | h for 2048 epochs "
          "| fixed s per fit / 1000 train | s / 1000 scored |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, r in results["rows"].items():
        print(
            f"| {name} | {r['seconds_per_step']:.2f} | {r['seconds_per_epoch_6000']:.0f} | "
            f"{r['hours_2048_epochs_6000']:.0f} | {r['fixed_seconds_per_1000_train']:.0f} | "
            f"{r['seconds_per_1000_scored']:.1f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-epochs", type=int, default=2)
    parser.add_argument("--n-score", type=int, default=512)
    parser.add_argument("--device", default="auto")
    add_options(parser, "out")
    parser.add_argument("--group", choices=sorted(GROUPS), default="defaults")
    main(**parse_options(parser))
