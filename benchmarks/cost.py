"""What a fit and a scoring pass cost, measured, for a few detector settings.

Trains ``n_epochs`` on ``n_train`` random 28x28 grayscale images (the Fashion-MNIST shape;
the content does not change the cost) and scores ``n_score`` images, then extrapolates
the seconds per epoch to a 6000-image class and to the paper's 2048 epochs.

    python benchmarks/cost.py
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

from con2 import Con2Detector

SETTINGS = {
    "defaults (base_width=64)": dict(),
    "base_width=16": dict(base_width=16),
    "CPU preset (base_width=8, A=8)": dict(base_width=8, n_test_augmentations=8),
}


def measure(settings: dict, n_train: int, n_epochs: int, n_score: int, device: str) -> dict:
    """Seconds per training epoch (per 1000 images) and per 1000 scored images."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    det = Con2Detector(random_state=0, device=device, **{**settings, "n_epochs": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det.fit(X)  # warm-up: allocations, kernel selection
        det.set_params(n_epochs=n_epochs)
        start = time.perf_counter()
        det.fit(X)
        fit = time.perf_counter() - start
    start = time.perf_counter()
    det.score_samples(X[:n_score])
    score = time.perf_counter() - start
    n_steps = n_train // min(det.batch_size, n_train)
    steps_per_6000 = 6000 // det.batch_size
    seconds_per_step = fit / (n_epochs * n_steps)  # includes embedding the training set
    return {
        "settings": {
            k: v
            for k, v in det.get_params().items()
            if k in ("base_width", "batch_size", "n_test_augmentations")
        },
        "seconds_per_step": seconds_per_step,
        "seconds_per_epoch_6000": seconds_per_step * steps_per_6000,
        "hours_2048_epochs_6000": seconds_per_step * steps_per_6000 * 2048 / 3600,
        "seconds_per_1000_scored": score / n_score * 1000,
    }


def main(n_train: int = 1024, n_epochs: int = 2, n_score: int = 512, device: str = "auto"):
    """Measure every entry of SETTINGS and print a markdown table."""
    hardware = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available() and device != "cpu"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    rows = {name: measure(s, n_train, n_epochs, n_score, device) for name, s in SETTINGS.items()}
    print(f"{hardware}; {n_train} training images 28x28, {n_epochs} epochs timed\n")
    print("| settings | s / step | s / epoch of 6000 | h for 2048 epochs | s / 1000 scored |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        cells = (r["seconds_per_step"], r["seconds_per_epoch_6000"], r["hours_2048_epochs_6000"])
        print(
            f"| {name} | {cells[0]:.2f} | {cells[1]:.0f} | {cells[2]:.0f} | "
            f"{r['seconds_per_1000_scored']:.1f} |"
        )
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-epochs", type=int, default=2)
    parser.add_argument("--n-score", type=int, default=512)
    parser.add_argument("--device", default="auto")
    main(**{k.replace("-", "_"): v for k, v in vars(parser.parse_args()).items()})
