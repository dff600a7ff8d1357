"""Reading image files and data larger than memory: decode speed and peak memory.

Two measurements, in one run:

1. **Decode + resize throughput** (images/s) of ``con2.io.decode_files`` (worker processes,
   one per CPU) against a plain single-threaded Pillow loop (open, convert, resize,
   ``np.asarray``) on the same files, warm in the page cache, interleaved over rounds;
   medians compared. The workers are started before timing (they are reused between
   calls); their start-up is reported separately.
2. **Peak anonymous memory** (``RssAnon``: the page cache of memory-mapped files does
   not count) of ``fit`` plus ``score_samples`` on a ``np.load(..., mmap_mode="r")``
   array of RGB 32x32 ``uint8`` images, for two sizes, each in a fresh process that
   samples ``/proc/self/status`` every 2 ms. The Gaussian scorer's state does not grow
   with the number of images, so neither should the peak.

    python benchmarks/files.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import (
    ResultsFile,
    add_options,
    command_line,
    command_lines,
    parse_options,
    render_block,
    run_header,
)
from PIL import Image

from con2 import io

ROOT = Path(__file__).resolve().parent


def make_files(folder: Path, n: int, size: int, fmt: str) -> list:
    """``n`` RGB files of ``size`` x ``size`` pixels: smooth colour fields with noise."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, size)
    paths = []
    for i in range(n):
        a, b, c = rng.random(3)
        flat = np.full((size, size), c)
        base = np.stack([np.outer(grid * a, grid), np.outer(grid, grid * b), flat], -1)
        noise = rng.normal(0, 0.05, (size, size, 3))
        pixels = (np.clip(base + noise, 0, 1) * 255).astype(np.uint8)
        path = folder / f"{i:05d}.{fmt}"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def plain_loop(paths: list, target: int) -> np.ndarray:
    """Decode as a user's loop would: one file after another, in this process."""
    out = np.empty((len(paths), 3, target, target), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((target, target), Image.Resampling.BILINEAR)
        out[i] = np.asarray(resized).transpose(2, 0, 1)
    return out


def decode_throughput(n_files: int, size: int, target: int, fmt: str, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        paths = make_files(Path(folder), n_files, size, fmt)
        plain_loop(paths, target)  # page cache warm for both
        started = time.perf_counter()
        io.decode_files(paths[:128], (3, target, target), np.uint8)
        startup = time.perf_counter() - started
        times = {"plain": [], "con2": []}
        for _ in range(rounds):
            started = time.perf_counter()
            expected = plain_loop(paths, target)
            times["plain"].append(time.perf_counter() - started)
            started = time.perf_counter()
            decoded = io.decode_files(paths, (3, target, target), np.uint8)
            times["con2"].append(time.perf_counter() - started)
        assert np.array_equal(decoded, expected), "con2.io and Pillow's loop disagree"
    plain, con2 = (float(np.median(times[k])) for k in ("plain", "con2"))
    return {
        "files": n_files, "file_size": size, "target_size": target, "format": fmt,
        "rounds": rounds, "workers": os.cpu_count(),
        "plain_images_per_s": n_files / plain, "con2_images_per_s": n_files / con2,
        "speedup": plain / con2, "first_call_seconds_128_files": startup,
    }  # fmt: skip


CHILD = r"""
import json, sys, threading, time, warnings
import numpy as np
from con2 import Con2Detector

def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

path, settings = sys.argv[1], json.loads(sys.argv[2])
X = np.load(path, mmap_mode="r")
warnings.simplefilter("ignore", UserWarning)
Con2Detector(**settings).fit(np.asarray(X[:64]))  # allocators, kernels, threads: warm
baseline, peak, running = rss_anon(), [0], [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.002)

thread = threading.Thread(target=sample, daemon=True)
thread.start()
started = time.perf_counter()
det = Con2Detector(**settings).fit(X)
scores = det.score_samples(X)
seconds = time.perf_counter() - started
running[0] = False
thread.join()
print(json.dumps({"baseline": baseline, "peak": max(peak[0], rss_anon()), "seconds": seconds,
                  "n_scores": len(scores)}))
"""


def peak_memory(n_images: int, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "images.npy")
        rng = np.random.default_rng(0)
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                           shape=(n_images, 3, 32, 32))  # fmt: skip
        for start in range(0, n_images, 5000):
            stop = min(n_images, start + 5000)
            images[start:stop] = rng.integers(0, 256, (stop - start, 3, 32, 32), dtype=np.uint8)
        images.flush()
        del images
        done = subprocess.run([sys.executable, "-c", CHILD, path, json.dumps(settings)],
                              capture_output=True, text=True, check=True)  # fmt: skip
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "images": n_images, "data_mib": n_images * 3 * 32 * 32 / 2**20,
        "baseline_mib": measured["baseline"] / 2**20, "peak_mib": measured["peak"] / 2**20,
        "growth_mib": (measured["peak"] - measured["baseline"]) / 2**20,
        "seconds": measured["seconds"],
    }  # fmt: skip


def main(n_files: int = 2000, size: int = 256, target: int = 64, fmt: str = "png",
         rounds: int = 3, sizes: tuple = (6000, 60000), out: str | None = None,
         write_readme: bool = False) -> dict:  # fmt: skip
    settings = dict(scorer="lh", base_width=4, n_epochs=1, batch_size=256, context="vflip",
                    n_test_augmentations=4, random_state=0, device="cpu")  # fmt: skip
    memory = [peak_memory(n, settings) for n in sizes]
    small, large = memory[0], memory[-1]
    growth = large["growth_mib"] - small["growth_mib"]
    data_growth = large["data_mib"] - small["data_mib"]
    path = Path(out) if out else ROOT / "results" / "files-cpu.json"
    results = ResultsFile(path, resume=False)
    results.start_run(command_line(
        "files.py", ("--n-files", n_files), ("--size", size), ("--target", target),
        ("--format", fmt), ("--rounds", rounds), ("--sizes", sizes),
    ), device="cpu")  # fmt: skip
    results.data.update(
        name="files-cpu",
        decode=decode_throughput(n_files, size, target, fmt, rounds),
        memory={"settings": settings, "runs": memory, "peak_growth_mib": growth,
                "data_growth_mib": data_growth,
                "peak_growth_share_of_data_growth": growth / data_growth},
    )  # fmt: skip
    results.save()
    print(readme_text(results.data))
    if write_readme:
        render_block(ROOT / "README.md", "files-cpu", readme_text(results.data))
    return results.data


def readme_text(results) -> str:
    d, m = results["decode"], results["memory"]
    lines = [
        f"{run_header(results)}.",
        "",
        *command_lines(results),
        "",
        f"Decoding {d['files']} {d['format'].upper()} files of {d['file_size']}x"
        f"{d['file_size']} RGB and resizing them to {d['target_size']}x{d['target_size']} "
        f"(median of {d['rounds']} interleaved rounds, files in the page cache):",
        "",
        "| reader | images / s |",
        "|---|---|",
        f"| plain Pillow loop, one thread | {d['plain_images_per_s']:.0f} |",
        f"| `con2.io.decode_files`, {d['workers']} worker processes | "
        f"{d['con2_images_per_s']:.0f} |",
        f"| **speed-up** | **{d['speedup']:.2f}x** |",
        "",
        f"Starting the workers (first call, 128 files): {d['first_call_seconds_128_files']:.1f} s.",
        "",
        "`fit` + `score_samples` on a memory-mapped `uint8` array of RGB 32x32 images "
        f"({', '.join(f'{k}={v}' for k, v in m['settings'].items())}):",
        "",
        "| images | data (MiB) | RssAnon before (MiB) | peak RssAnon (MiB) | growth (MiB) "
        "| seconds |",
        "|---|---|---|---|---|---|",
    ]
    for run in m["runs"]:
        lines.append(
            f"| {run['images']} | {run['data_mib']:.0f} | {run['baseline_mib']:.0f} | "
            f"{run['peak_mib']:.0f} | {run['growth_mib']:.0f} | {run['seconds']:.0f} |"
        )
    fold = m["runs"][-1]["images"] / m["runs"][0]["images"]
    lines += [
        "",
        f"{fold:g} times the data ({m['data_growth_mib']:.0f} MiB more) raised the peak by "
        f"{m['peak_growth_mib']:.1f} MiB, {100 * m['peak_growth_share_of_data_growth']:.1f}% "
        "of the data growth.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--target", type=int, default=64)
    parser.add_argument("--format", dest="fmt", default="png", choices=["png", "jpg", "tif"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 60000])
    add_options(parser, "out", "write-readme")
    main(**parse_options(parser))
