"""Scoring an exported model with ONNX Runtime against ``score_samples``, side by side.

For each scorer, a detector is fitted on random 28x28 grayscale images (the content does
not change the cost of scoring) and exported to ONNX and ``torch.export``; then, in turn
for several rounds, ``score_samples`` and an ONNX Runtime session score the same new
images, with one CPU thread and with all of them (torch's and ONNX Runtime's intra-op
threads). Medians of images per second, the largest relative score difference, and the
file sizes of the weights-only, ONNX and pt2 files.

    python benchmarks/deploy.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
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

from con2 import Con2Detector

ROOT = Path(__file__).resolve().parent


def measure(scorer: str, settings: dict, n_train: int, n_score: int, batch: int, rounds: int,
            folder: Path) -> dict:  # fmt: skip
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    new = rng.integers(0, 256, (n_score, 1, 28, 28), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = Con2Detector(scorer=scorer, random_state=0, device="cpu", **settings).fit(X)
    files = {name: folder / f"{scorer}.{name}" for name in ("con2", "onnx", "pt2")}
    det.save(files["con2"])
    det.export(files["onnx"])
    det.export(files["pt2"], format="pt2")
    threads = {"1 thread": 1, "all threads": os.cpu_count()}
    sessions = {}
    for name, n in threads.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = n, 1
        sessions[name] = ort.InferenceSession(str(files["onnx"]), options,
                                              providers=["CPUExecutionProvider"])  # fmt: skip

    def onnx_scores(session):
        return np.concatenate([session.run(["score"], {"images": new[i : i + batch]})[0]
                               for i in range(0, n_score, batch)])  # fmt: skip

    times = {
        f"{what}, {name}": [] for what in ("score_samples", "ONNX Runtime") for name in threads
    }
    previous = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for name, n in threads.items():
                torch.set_num_threads(n)
                started = time.perf_counter()
                reference = det.score_samples(new[:, 0])
                times[f"score_samples, {name}"].append(time.perf_counter() - started)
                started = time.perf_counter()
                exported = onnx_scores(sessions[name])
                times[f"ONNX Runtime, {name}"].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return {
        "images_per_s": {k: n_score / float(np.median(v)) for k, v in times.items()},
        "max_relative_difference": float(np.max(np.abs(exported - reference) / np.abs(reference))),
        "file_mib": {k: v.stat().st_size / 2**20 for k, v in files.items()},
    }


def main(n_train: int = 2000, n_score: int = 2000, batch: int = 256, rounds: int = 3,
         out: str | None = None, write_readme: bool = False) -> dict:  # fmt: skip
    settings = dict(base_width=16, n_epochs=1, n_test_augmentations=16, batch_size=256)
    with tempfile.TemporaryDirectory() as folder:
        rows = {s: measure(s, settings, n_train, n_score, batch, rounds, Path(folder))
                for s in ("nnd", "lh")}  # fmt: skip
    path = Path(out) if out else ROOT / "results" / "deploy-cpu.json"
    results = ResultsFile(path, resume=False)
    results.start_run(command_line(
        "deploy.py", ("--n-train", n_train), ("--n-score", n_score), ("--batch", batch),
        ("--rounds", rounds),
    ), device="cpu")  # fmt: skip
    results.data.update(
        name="deploy-cpu", onnxruntime=ort.__version__, torch=torch.__version__,
        settings={**settings, "n_train": n_train, "n_score": n_score, "onnx_batch": batch},
        rows=rows,
    )  # fmt: skip
    results.save()
    print(readme_text(results.data))
    if write_readme:
        render_block(ROOT / "README.md", "deploy-cpu", readme_text(results.data))
    return results.data


def readme_text(results) -> str:
    s = results["settings"]
    lines = [
        f"{run_header(results)}, torch {results['torch']}, onnxruntime "
        f"{results['onnxruntime']}; ResNet18 width {s['base_width']}, "
        f"{s['n_test_augmentations']} views, {s['n_train']} training images, {s['n_score']} "
        "new 28x28 images scored (ONNX Runtime in batches of "
        f"{s['onnx_batch']}); medians of interleaved rounds.",
        "",
        *command_lines(results),
        "",
        "| scorer | threads | `score_samples` (images/s) | ONNX Runtime (images/s) | ratio "
        "| largest relative score difference |",
        "|---|---|---|---|---|---|",
    ]
    for scorer, row in results["rows"].items():
        rates = row["images_per_s"]
        for threads in ("1 thread", "all threads"):
            eager, onnx = rates[f"score_samples, {threads}"], rates[f"ONNX Runtime, {threads}"]
            difference = row["max_relative_difference"]
            lines.append(f"| {scorer} | {threads} | {eager:.0f} | {onnx:.0f} | "
                         f"{onnx / eager:.2f} | {difference:.1e} |")  # fmt: skip
    lines += [
        "",
        "| scorer | weights-only `.con2` (MiB) | `.onnx` (MiB) | `.pt2` (MiB) |",
        "|---|---|---|---|",
    ]
    for scorer, row in results["rows"].items():
        size = row["file_mib"]
        sizes = " | ".join(f"{size[k]:.1f}" for k in ("con2", "onnx", "pt2"))
        lines.append(f"| {scorer} | {sizes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-score", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    add_options(parser, "out", "write-readme")
    main(**parse_options(parser))
