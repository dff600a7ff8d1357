"""Data-parallel training throughput: one process against several, side by side.

For each number of processes N, ``Con2Detector.fit`` (sharded batches, gathered loss,
``DistributedDataParallel``) runs under
``python -m torch.distributed.run --nproc_per_node=N``, the configurations in turn for
several rounds. On a CPU every configuration gets the same cores (each process runs
``cores // N`` torch threads), so the efficiency is throughput(N) / throughput(1); with
one GPU per process it is throughput(N) / (N x throughput(1)). Images per second count
the epochs after the first (start-up and warm-up excluded), from the fit's
``epoch_seconds_``; medians over rounds.

    python benchmarks/scaling.py --processes 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _harness import (
    ResultsFile,
    add_options,
    command_line,
    command_lines,
    parse_options,
    render_block,
    run_header,
)

ROOT = Path(__file__).resolve().parent


def worker(out: str, width: int, batch_size: int, n_images: int, n_epochs: int) -> None:
    """Run as one torchrun process: train, and (rank 0) write images per second."""
    import warnings

    from con2 import Con2Detector

    images = torch.randint(0, 256, (n_images, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).numpy()  # fmt: skip
    det = Con2Detector(context="vflip", base_width=width, batch_size=batch_size,
                       n_epochs=n_epochs, n_test_augmentations=2, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random pixels: no context suits them
        det.fit(images)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun's rank; one process has no group
        steps = n_images // batch_size
        per_s = steps * batch_size * (n_epochs - 1) / sum(det.epoch_seconds_[1:])
        Path(out).write_text(json.dumps({"images_per_s": per_s, "device": str(det.device_)}))


def launch(n_processes: int, width, batch_size, n_images, n_epochs) -> dict:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={n_processes}", __file__, "--worker", str(out),
                   "--width", str(width), "--batch-size", str(batch_size),
                   "--n-images", str(n_images), "--n-epochs", str(n_epochs)]  # fmt: skip
        threads = str(max(1, cores // n_processes))
        subprocess.run(command, check=True, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": threads})  # fmt: skip
        return json.loads(out.read_text())


def main(processes: tuple = (1, 2), width: int = 8, batch_size: int = 256,
         n_images: int = 2048, n_epochs: int = 4, rounds: int = 3,
         out: str | None = None, write_readme: bool = False) -> dict:  # fmt: skip
    """Launch every number of processes in turn, ``rounds`` times; return (and save) speeds."""
    measured = {n: [] for n in processes}
    device = None
    for _ in range(rounds):
        for n in processes:
            run = launch(n, width, batch_size, n_images, n_epochs)
            measured[n].append(run["images_per_s"])
            device = run["device"]
    per_s = {n: float(np.median(v)) for n, v in measured.items()}
    gpu = device is not None and device.startswith("cuda")
    base = per_s[processes[0]]
    name = "scaling-cpu" if not gpu else "scaling-gpu"
    results = ResultsFile(Path(out) if out else ROOT / "results" / f"{name}.json", resume=False)
    results.start_run(command_line(
        "scaling.py", ("--processes", processes), ("--width", width),
        ("--batch-size", batch_size), ("--n-images", n_images), ("--n-epochs", n_epochs),
        ("--rounds", rounds),
    ), device=device)  # fmt: skip
    results.data.update(
        name=name, device=device,
        images_per_s={str(n): v for n, v in per_s.items()},
        rounds={str(n): v for n, v in measured.items()},
        efficiency={str(n): per_s[n] / (base * (n if gpu else 1)) for n in processes},
    )  # fmt: skip
    results.save()
    print(readme_text(results.data))
    if write_readme:
        render_block(ROOT / "README.md", name, readme_text(results.data))
    return results.data


def readme_text(results) -> str:
    lines = [
        f"{run_header(results)}, processes on {results['device']}.",
        "",
        *command_lines(results),
        "",
        "| processes | images / s (median) | rounds | efficiency |",
        "|---|---|---|---|",
    ]
    for n, value in results["images_per_s"].items():
        rounds = ", ".join(f"{v:.0f}" for v in results["rounds"][n])
        lines.append(f"| {n} | {value:.0f} | {rounds} | {results['efficiency'][n]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-images", type=int, default=2048)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    add_options(parser, "out", "write-readme")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    options = parse_options(parser)
    worker_out = options.pop("worker")
    if worker_out:  # one torchrun process of launch()
        worker(worker_out, options["width"], options["batch_size"], options["n_images"],
               options["n_epochs"])  # fmt: skip
    else:
        main(**options)
