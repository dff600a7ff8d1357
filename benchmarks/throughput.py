"""Training and scoring speed, measured as ratios side by side in one run.

All four in float32 (the arithmetic of the committed tables; ``--precision-table``
compares float32 with bfloat16).

1. **Overhead**: one Con2 training step of ``Con2Detector.fit`` (batch gather, context,
   T, forward, loss, backward, AdamW), timed by the fit itself (``epoch_seconds_`` of a
   warm-started one-epoch fit), against the backbone's forward and backward alone on
   pre-made tensors of the same shape and precision.
2. **Conventional pipeline**: a SupContrast-style loop on the same backbone and batch:
   torchvision transforms per image in ``DataLoader`` workers, float32, a host-to-device
   copy every step, the same Con2 loss. Images per second, ours against it.
3. **Scoring**: 10000 test images x 40 views against 6000 training images, on given
   features: our two scorers against scikit-learn's ``NearestNeighbors(metric="cosine")``
   and ``EmpiricalCovariance``; seconds and peak memory.
4. **Full budget**: the cost of 2048 epochs on 6000 images, extrapolated from (1).

``--precision-table`` measures something else, side by side in one run on the CPU:
float32 against bfloat16 (autocast) for widths 8, 16 and 64 on 28 px grayscale and 64
and 128 px RGB images, with one and two threads:

- *memory formats*: one training step of the encoder, its heads, the Con2 loss and
  AdamW on pre-made views, with contiguous and channels-last weights and views;
- *the library's step*: ``Con2Detector(precision=...)`` fits, also with ``compile=True``,
  timed by their own ``epoch_seconds_`` (the first epoch, and compilation, left out);
- *where a 128 px RGB step goes* (``torch.profiler`` ranges of a bfloat16 fit), for the
  share of making the views (gather, context, augmentations).

    python benchmarks/throughput.py --width 64 --write-readme
    python benchmarks/throughput.py --precision-table --write-readme
    python benchmarks/throughput.py --precision-table --threads 2 --image-sizes 28 64 \
        --out benchmarks/results/throughput-precision-cpu-amx.json --write-readme  # smaller
    python benchmarks/throughput.py --views-table --write-readme   # that share alone
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from _harness import (
    ResultsFile,
    add_options,
    command_line,
    command_lines,
    parse_options,
    render_block,
    run_header,
)
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors
from torch.utils.data import DataLoader, Dataset

from con2 import Con2Detector, Con2Objective
from con2.augment import SimCLRAugment
from con2.networks import Encoder, ResNet18, resnet18
from con2.scorers import GaussianScorer, NearestNeighborScorer

ROOT = Path(__file__).resolve().parent


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def images(n, size, channels, seed=0):
    return torch.from_numpy(
        np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def training_precision(device, precision: str):
    """Return the autocast and memory format a fit with ``precision`` trains in.

    bfloat16 autocast with channels-last (TF32 allowed on CUDA), or float32: contiguous
    on the CPU, channels-last on CUDA (the library's choices, benchmarks/README.md).
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16), torch.channels_last
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return contextlib.nullcontext(), layout


def con2_runners(device, width, batch_size, size, channels, n_steps, precision="float32"):
    """Return callables running n_steps of Con2 and of the backbone alone; each returns seconds.

    Con2 is ``Con2Detector.fit``, warm-started for one epoch of ``n_steps`` steps at a
    time (a fresh AdamW state each epoch, as a warm start has); its time is the fit's own
    record of the epoch, without the scorer's fit that follows.
    """
    X = images(n_steps * batch_size, size, channels).numpy()
    det = Con2Detector(context="vflip", base_width=width, batch_size=batch_size, n_epochs=1,
                       n_test_augmentations=2, device=device.type, random_state=0,
                       warm_start=True, precision=precision)  # fmt: skip
    _, layout = training_precision(device, precision)
    backbone = ResNet18(channels, width).to(device, memory_format=layout)
    # The backbone sees real views (augmented images in both contexts), made before timing.
    x = torch.from_numpy(X[:batch_size]).float().div(255)
    stacked = torch.cat([x, x.flip(-2)]).repeat(2, 1, 1, 1)
    augment = SimCLRAugment()
    params = augment.sample(len(stacked), (size, size), torch.Generator().manual_seed(1))
    views = ((augment.apply(stacked, params) - 0.5) / 0.5).to(device)
    views = views.contiguous(memory_format=layout)

    def con2_epoch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # random pixels suit no context
            det.fit(X)
        return det.epoch_seconds_[-1]

    def backbone_steps():
        sync(device)
        start = time.perf_counter()
        for _ in range(n_steps):
            backbone.zero_grad(set_to_none=True)
            with training_precision(device, precision)[0]:
                h = backbone(views)
            h.float().sum().backward()
        sync(device)
        return time.perf_counter() - start

    return con2_epoch, backbone_steps


def training_speed(device, width, batch_size, size, channels, n_steps, repeats, workers,
                   precision="float32"):  # fmt: skip
    """Seconds per step of Con2, the backbone alone and the conventional pipeline.

    The three run in turn, ``repeats`` rounds after a warm-up round, so that a slow
    moment of a shared machine hits all of them; the medians are compared.
    """
    con2_epoch, backbone_steps = con2_runners(device, width, batch_size, size, channels, n_steps,
                                              precision)  # fmt: skip
    conventional_epoch = conventional_runner(
        device, width, batch_size, size, channels, n_steps, workers
    )
    runners = {"con2": con2_epoch, "backbone": backbone_steps, "conventional": conventional_epoch}
    samples = {name: [] for name in runners}
    for round_ in range(repeats + 1):
        for name, run in runners.items():
            seconds = run() / n_steps
            if round_ > 0:  # round 0 warms up allocators, kernels and workers
                samples[name].append(seconds)
    median = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "con2_step_s": median["con2"],
        "backbone_step_s": median["backbone"],
        "conventional_step_s": median["conventional"],
        "overhead_ratio": median["con2"] / median["backbone"],
        "speedup_vs_conventional": median["conventional"] / median["con2"],
        "samples": samples,
    }


class ConventionalViews(Dataset):
    """SupContrast-style dataset: two views in each of two contexts per item.

    The views are made by torchvision transforms on one PIL image at a time.
    """

    def __init__(self, images_uint8):
        self.images = images_uint8
        size = images_uint8.shape[-1]
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
            T.Normalize(0.5, 0.5),
        ])  # fmt: skip

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        array = self.images[index]
        image = T.functional.to_pil_image(array)
        flipped = T.functional.vflip(image)
        return torch.stack([self.transform(im) for im in (image, flipped, image, flipped)])


def conventional_runner(device, width, batch_size, size, channels, n_steps, workers):
    """Return a callable running one epoch (n_steps) of the per-image DataLoader pipeline."""
    data = ConventionalViews(images(n_steps * batch_size, size, channels))
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )  # fmt: skip
    objective = Con2Objective()
    encoder = Encoder(ResNet18(channels, width), objective.heads(8 * width, 1)).to(device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=1e-3)
    contexts = torch.tensor([0, 1, 0, 1], device=device).repeat_interleave(batch_size)
    instances = torch.arange(batch_size, device=device).repeat(4)

    def steps():
        for batch in loader:  # (batch, 4, C, H, W): draw-major order, as make_views
            views = batch.transpose(0, 1).reshape(-1, *batch.shape[2:]).to(device)
            loss = objective.loss(encoder(views), contexts, instances, 0.5)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-step logging

    def epoch():
        return timed(steps, device)

    return epoch


def profile_step(device, width, batch_size, size, channels, precision="float32") -> dict:
    """Milliseconds per part of one Con2 step, from ``torch.profiler`` ranges."""
    con2_epoch, _ = con2_runners(device, width, batch_size, size, channels, 2, precision)
    con2_epoch()  # warm-up (the ranges below are the training loop's own, "con2::...")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        con2_epoch()
        sync(device)
    parts = {}
    for event in prof.key_averages():
        if event.key.startswith("con2::"):
            total = event.device_time_total if device.type == "cuda" else event.cpu_time_total
            parts[event.key.removeprefix("con2::")] = total / 1000 / 2  # ms per step
    return parts


def peak_memory(fn, device):
    """Run fn; return (seconds, peak memory in MiB above the level before it)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        seconds = timed(fn, device)
        return seconds, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark
    base = _status_kib("VmRSS")
    seconds = timed(fn, device)
    return seconds, (_status_kib("VmHWM") - base) / 1024


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def scoring(device, dim, n_train, n_test, n_views) -> dict:
    """Seconds and peak memory to score n_test images x n_views views against n_train."""
    gen = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(n_views, n_train, dim, generator=gen), dim=2).to(device)
    test = F.normalize(torch.randn(n_views, n_test, dim, generator=gen), dim=2).to(device)
    results, outputs = {}, {}

    def run(name, fn):
        holder = {}
        seconds, mib = peak_memory(lambda: holder.setdefault("out", fn()), device)
        outputs[name] = np.asarray(holder["out"], dtype=np.float64)
        results[name] = {"seconds": seconds, "images_per_s": n_test / seconds, "peak_mib": mib}

    nnd = NearestNeighborScorer().fit(train)
    half = NearestNeighborScorer(bank_dtype="float16").fit(train)
    run("con2 nnd (float32 bank)", lambda: nnd.score_samples(test).cpu())
    run("con2 nnd (float16 bank)", lambda: half.score_samples(test).cpu())
    run("con2 lh (fit + score)", lambda: GaussianScorer().fit(train).score_samples(test).cpu())
    train_np, test_np = train.cpu().numpy(), test.cpu().numpy()

    def sklearn_nn():
        total = np.zeros(n_test)
        for view in range(n_views):
            nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(train_np[view])
            total += 1 - nn.kneighbors(test_np[view])[0][:, 0]
        return total / n_views

    def sklearn_gaussian():
        total = np.zeros(n_test)
        for view in range(n_views):
            total -= EmpiricalCovariance().fit(train_np[view]).mahalanobis(test_np[view])
        return total / n_views

    run("sklearn NearestNeighbors(cosine)", sklearn_nn)
    run("sklearn EmpiricalCovariance (fit + mahalanobis)", sklearn_gaussian)
    same = np.abs(outputs["con2 nnd (float32 bank)"] - outputs["sklearn NearestNeighbors(cosine)"])
    results["max |con2 nnd - sklearn|"] = float(same.max())
    return results


PRECISION_WIDTHS = (8, 16, 64)
PRECISION_THREADS = (1, 2)
PRECISION_IMAGES = {"28 px gray": (1, 28), "64 px RGB": (3, 64), "128 px RGB": (3, 128)}
FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FITS = {
    "float32": dict(precision="float32"),
    "bfloat16": dict(precision="bfloat16"),
    "float32, compile": dict(precision="float32", compile=True),
    "bfloat16, compile": dict(precision="bfloat16", compile=True),
}


def step_batch(width: int, size: int) -> int:
    """Images per step: 256 at width 8 on 28 px, fewer (at least 16) where views cost more.

    A view costs about width^2 x the pixels the first stage sees (a quarter of a side
    above 64 px, where the ImageNet stem downsamples by 4).
    """
    pixels = (size if size <= 64 else size // 4) ** 2
    return max(16, min(256, 256 * 8**2 * 28**2 // (width**2 * pixels)) // 4 * 4)


def format_runners(width, channels, size, batch, skip=()) -> dict:
    """One step on pre-made views per (dtype, memory format); each returns its seconds."""
    objective = Con2Objective()
    x = images(batch, size, channels).float().div(255)
    stacked = torch.cat([x, x.flip(-2)]).repeat(2, 1, 1, 1)
    augment = SimCLRAugment()
    params = augment.sample(len(stacked), (size, size), torch.Generator().manual_seed(1))
    views = (augment.apply(stacked, params) - 0.5) / 0.5
    contexts = torch.tensor([0, 1, 0, 1]).repeat_interleave(batch)
    instances = torch.arange(batch).repeat(4)
    runners = {}
    for (dname, dtype), (fname, layout) in itertools.product(DTYPES.items(), FORMATS.items()):
        torch.manual_seed(0)
        backbone = resnet18((channels, size, size), width)  # the library's stem for the size
        encoder = Encoder(backbone, objective.heads(8 * width, 1))
        encoder = encoder.to(memory_format=layout)
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=1e-3)
        arranged = views.contiguous(memory_format=layout)

        def step(encoder=encoder, optimizer=optimizer, arranged=arranged, dtype=dtype):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = objective.loss(encoder(arranged), contexts, instances, 0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start

        runners[f"{dname} {fname}"] = step
    return {name: run for name, run in runners.items() if name not in skip}


def fit_runners(width, channels, size, batch, n_steps: int, epochs: int) -> dict:
    """Library fits per precision (and compiled); each returns seconds per step."""
    X = images(n_steps * batch, size, channels).numpy()

    def runner(params):
        def run():
            det = Con2Detector(context="vflip", base_width=width, batch_size=batch,
                               n_epochs=1 + epochs, n_test_augmentations=2, device="cpu",
                               random_state=0, **params)  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # random pixels suit no context
                det.fit(X)
            return statistics.median(det.epoch_seconds_[1:]) / n_steps

        return run

    return {name: runner(params) for name, params in FITS.items()}


def views_share(width, channels, size, batch) -> dict:
    """Milliseconds per part of a bfloat16 step, from a profiled fit of two epochs."""
    X = images(2 * batch, size, channels).numpy()
    det = Con2Detector(context="vflip", base_width=width, batch_size=batch, n_epochs=2,
                       n_test_augmentations=2, device="cpu", precision="bfloat16",
                       random_state=0)  # fmt: skip
    with warnings.catch_warnings(), torch.profiler.profile() as prof:
        warnings.simplefilter("ignore", UserWarning)
        det.fit(X)
    parts = {event.key.removeprefix("con2::"): event.cpu_time_total / 1000 / 4
             for event in prof.key_averages() if event.key.startswith("con2::")}  # fmt: skip
    return {"ms": parts, "views_share": parts["views"] / sum(parts.values())}


def interleaved(runners: dict, rounds: int) -> dict:
    """Medians of ``rounds`` rounds of every runner in turn, after a warm-up round."""
    samples = {name: [] for name in runners}
    for round_ in range(rounds + 1):
        for name, run in runners.items():
            seconds = run()
            if round_ > 0:
                samples[name].append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def precision_case(case: dict) -> dict:
    """One (width, image, threads) case of the table, measured in this process."""
    torch.set_num_threads(case["threads"])
    width, image, rounds = case["width"], case["image"], case["rounds"]
    channels, size = case["shape"]
    batch = case.get("batch") or step_batch(width, size)
    row = {"width": width, "image": image, "threads": case["threads"], "batch": batch}
    row["formats"] = interleaved(format_runners(width, channels, size, batch, case["skip"]),
                                 rounds)  # fmt: skip
    fits = fit_runners(width, channels, size, batch, case["n_steps"], case["epochs"])
    row["fits"] = interleaved(fits, rounds)
    if case.get("profile"):
        row["profile"] = views_share(width, channels, size, batch)
    return row


def precision_table(results, threads=PRECISION_THREADS, rounds: int = 3, n_steps: int = 2,
                    epochs: int = 2, widths=PRECISION_WIDTHS, shapes=None) -> dict:  # fmt: skip
    """Every (width, image, threads) case: seconds per step of each format and each fit.

    Each case is saved in ``results`` (a dict-rows :class:`ResultsFile`) as it finishes,
    and a case already there is skipped: the same command run again after an
    interruption measures only what is missing. Every ratio of the table is within one
    case, measured side by side in one process.

    Each case runs in a process of its own: torch 2.14.1's CPU backward corrupts the heap
    (and the process dies) for float32 channels-last at small widths on larger images
    (width 8 from 48 px, measured), so a case whose process dies is measured again
    without float32 channels-last, and the table says so.
    """
    shapes = shapes or PRECISION_IMAGES
    for count, width, (image, shape) in itertools.product(threads, widths, shapes.items()):
        key = f"w{width} {image} {count}t"
        if results.has(key, "fits"):
            continue
        case = {"width": width, "image": image, "shape": shape, "threads": count,
                "rounds": rounds, "n_steps": n_steps, "epochs": epochs, "skip": [],
                "profile": shape[1] == 128 and count == max(threads)}  # fmt: skip
        row = _run_case(case)
        if row is None:
            case["skip"] = ["float32 channels-last"]
            row = _run_case(case)
            if row is None:
                raise RuntimeError(f"the case {case} died also without float32 channels-last")
            row["crashed"] = case["skip"]
        results.add(key, None, row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
    return results.data["rows"]


def _run_case(case: dict) -> dict | None:
    """Run :func:`precision_case` in a new process; None when that process dies."""
    done = subprocess.run([sys.executable, __file__, "--precision-case", json.dumps(case)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if done.returncode != 0:
        if done.returncode > 0 and "Error" in done.stderr:
            raise RuntimeError(done.stderr[-2000:])  # a Python error: a bug, not a crash
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def precision_main(out=None, write_readme=False, rounds=3, threads=PRECISION_THREADS, widths=None,
                   shapes=None) -> dict:  # fmt: skip
    """Run the precision table and save it (``results/throughput-precision-cpu.json``).

    ``out``: another results file, whose README block is named after it. Fewer threads,
    widths or images than the defaults make a smaller table, and its command says which.
    """
    path = Path(out) if out else ROOT / "results" / "throughput-precision-cpu.json"
    widths, shapes = widths or PRECISION_WIDTHS, shapes or PRECISION_IMAGES
    identity = {"table": "precision", "rounds": rounds, "threads": list(threads),
                "widths": list(widths), "images": list(shapes), "torch": torch.__version__,
                "native_bfloat16": native_bfloat16()}  # fmt: skip
    results = ResultsFile(path, identity, rows="dict")
    sizes = [shape[1] for shape in shapes.values()]
    results.start_run(command_line(
        "throughput.py", ("--precision-table", True), ("--rounds", rounds),
        ("--threads", None if tuple(threads) == PRECISION_THREADS else threads),
        ("--widths", None if tuple(widths) == PRECISION_WIDTHS else widths),
        ("--image-sizes", None if shapes == PRECISION_IMAGES else sizes),
        ("--out", out)), device=torch.device("cpu"))  # fmt: skip
    precision_table(results, threads, rounds, widths=widths, shapes=shapes)
    results.finish()
    if write_readme:
        render_block(ROOT / "README.md", path.stem, precision_text(results.data))
    return results.data


def views_main(
    out=None, write_readme=False, threads=PRECISION_THREADS, widths=PRECISION_WIDTHS
) -> dict:
    """Share of a bfloat16 step at 128 px RGB spent making the views, per width and threads.

    The measurement of the precision table's last column alone (:func:`views_share`),
    to follow the views' cost without measuring the whole table again. Saved in
    ``results/throughput-views-cpu.json``.
    """
    path = Path(out) if out else ROOT / "results" / "throughput-views-cpu.json"
    identity = {"table": "views", "image": "128 px RGB", "threads": list(threads),
                "widths": list(widths), "torch": torch.__version__}  # fmt: skip
    results = ResultsFile(path, identity, rows="dict")
    results.start_run(command_line("throughput.py", ("--views-table", True)),
                      device=torch.device("cpu"))  # fmt: skip
    saved = torch.get_num_threads()
    try:
        for count, width in itertools.product(threads, widths):
            key = f"w{width} {count}t"
            if results.has(key, "profile"):
                continue
            torch.set_num_threads(count)
            batch = step_batch(width, 128)
            row = {"width": width, "threads": count, "batch": batch,
                   "profile": views_share(width, 3, 128, batch)}  # fmt: skip
            results.add(key, None, row)
            print(json.dumps(row), flush=True)
    finally:
        torch.set_num_threads(saved)
    results.finish()
    if write_readme:
        render_block(ROOT / "README.md", "throughput-views-cpu", views_text(results.data))
    return results.data


def views_text(r) -> str:
    """Return the README block of the views table: milliseconds per part of a step."""
    rows = sorted(r["rows"].values(), key=lambda row: (row["threads"], row["width"]))
    parts = ["views", "forward", "loss", "backward", "optimizer"]
    lines = [
        f"{run_header(r)}, torch {r['torch']}; a bfloat16 `Con2Detector` fit at 128 px RGB "
        "(context vflip: 4 views per image), milliseconds per step by `torch.profiler` "
        "range.",
        "",
        *command_lines(r),
        "",
        "| width | threads | images | " + " | ".join(parts) + " | views' share |",
        "|---|---|---|" + "---|" * (len(parts) + 1),
    ]  # fmt: skip
    for row in rows:
        ms = row["profile"]["ms"]
        lines.append(f"| {row['width']} | {row['threads']} | {row['batch']} | "
                     + " | ".join(f"{ms[k]:.0f}" for k in parts)
                     + f" | {100 * row['profile']['views_share']:.0f}% |")  # fmt: skip
    return "\n".join(lines)


def native_bfloat16() -> str:
    """Return the CPU flags that say bfloat16 is computed in hardware (/proc/cpuinfo's)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    found = sorted({f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in text})
    return ", ".join(found) or "none"


def precision_text(r) -> str:
    """Return the README block of the precision table: ratios to float32 contiguous."""
    rows = sorted(r["rows"].values(), key=lambda row: (
        row["threads"], row["width"], r["images"].index(row["image"])))  # fmt: skip
    lines = [
        f"{run_header(r)}, torch {r['torch']}; CPU flags for bfloat16: {r['native_bfloat16']}; "
        "medians of interleaved rounds after a warm-up; speed-ups are float32 (contiguous, "
        "or the library's float32 fit) seconds divided by each case's.",
        "",
        *command_lines(r),
        *(["", r["note"]] if r.get("note") else []),
        "",
        "| width | images (batch) | threads | float32 channels-last | bf16 contiguous | "
        "bf16 channels-last | fit bf16 | fit f32 compiled | fit bf16 compiled | "
        "fit f32 s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in rows:
        f, fits = row["formats"], row["fits"]
        base, fit = f["float32 contiguous"], fits["float32"]
        lines.append(
            f"| {row['width']} | {row['image']} ({row['batch']}) | {row['threads']} | "
            + " | ".join(f"{base / f[k]:.2f}x" if k in f else "crashes" for k in (
                         "float32 channels-last", "bfloat16 contiguous",
                         "bfloat16 channels-last"))
            + " | "
            + " | ".join(f"{fit / fits[k]:.2f}x" for k in ("bfloat16", "float32, compile",
                         "bfloat16, compile"))
            + f" | {fit:.3f} |"
        )  # fmt: skip
    shares = [f"width {row['width']} {100 * row['profile']['views_share']:.0f}%"
              for row in rows if "profile" in row]  # fmt: skip
    if shares:
        lines += ["", "Share of a bfloat16 step spent making the views (gather, context, "
                  "augmentations) at 128 px RGB: " + ", ".join(shares) + "."]  # fmt: skip
    return "\n".join(lines)


def main(
    device: str = "auto",
    width: int = 64,
    batch_size: int = 256,
    image_size: int = 28,
    channels: int = 1,
    n_steps: int = 4,
    repeats: int = 5,
    workers: int = 2,
    n_test: int = 10000,
    n_train: int = 6000,
    n_views: int = 40,
    out: str | None = None,
    write_readme: bool = False,
) -> dict:
    """Run all four measurements and return (and save) the results."""
    dev = resolve_device(device)
    shape = (dev, width, batch_size, image_size, channels, n_steps)
    result = {"training": training_speed(*shape, repeats, workers)}
    print("training", json.dumps({k: v for k, v in result["training"].items() if k != "samples"}))
    result["step_parts_ms"] = profile_step(dev, width, batch_size, image_size, channels)
    print("step parts (ms)", json.dumps(result["step_parts_ms"]))
    result["scoring"] = scoring(dev, 8 * width, n_train, n_test, n_views)
    print("scoring", json.dumps(result["scoring"]))
    steps = 2048 * (6000 // batch_size)
    result["full_budget_hours"] = {
        "con2": steps * result["training"]["con2_step_s"] / 3600,
        "backbone floor": steps * result["training"]["backbone_step_s"] / 3600,
        "conventional": steps * result["training"]["conventional_step_s"] / 3600,
    }
    name = f"throughput-{dev.type}-w{width}"
    results = ResultsFile(Path(out) if out else ROOT / "results" / f"{name}.json", resume=False)
    results.start_run(command_line(
        "throughput.py", ("--device", device), ("--width", width), ("--batch-size", batch_size),
        ("--n-steps", n_steps), ("--repeats", repeats), ("--workers", workers),
    ), device=dev)  # fmt: skip
    settings = dict(width=width, batch_size=batch_size, image_size=image_size,
                    channels=channels, n_steps=n_steps, repeats=repeats, workers=workers,
                    n_test=n_test, n_train=n_train, n_views=n_views)  # fmt: skip
    results.data.update(result, device=dev.type, settings=settings, torch=torch.__version__)
    results.save()
    if write_readme:
        render_block(ROOT / "README.md", name, readme_text(results.data))
    return results.data


def readme_text(r) -> str:
    """Return the README block: a step against the backbone and the pipeline, scoring."""
    t, s = r["training"], r["scoring"]
    lines = [
        f"{run_header(r)}, torch {r['torch']}; ResNet18 width "
        f"{r['settings']['width']}, batch {r['settings']['batch_size']} images (x4 views), "
        f"{r['settings']['image_size']}x{r['settings']['image_size']}x"
        f"{r['settings']['channels']} images; medians of {r['settings']['repeats']} "
        "interleaved rounds.",
        "",
        *command_lines(r),
        "",
        "| per training step | seconds |",
        "|---|---|",
        "| Con2 step (gather, context, T, forward, loss, backward, AdamW) | "
        f"{t['con2_step_s']:.3f} |",
        f"| backbone forward + backward alone, same views | {t['backbone_step_s']:.3f} |",
        f"| conventional per-image DataLoader pipeline ({r['settings']['workers']} workers) "
        f"| {t['conventional_step_s']:.3f} |",
        f"| **overhead ratio** (Con2 / backbone) | **{t['overhead_ratio']:.3f}** |",
        "| **speed-up over the conventional pipeline** | "
        f"**{t['speedup_vs_conventional']:.2f}x** |",
        f"| 2048 epochs x 6000 images, extrapolated | {r['full_budget_hours']['con2']:.1f} h "
        f"(backbone floor {r['full_budget_hours']['backbone floor']:.1f} h, conventional "
        f"{r['full_budget_hours']['conventional']:.1f} h) |",
        "",
        "Where one Con2 step's time goes (`torch.profiler` ranges, ms): "
        + ", ".join(f"{k} {v:.0f}" for k, v in r["step_parts_ms"].items())
        + ".",
        "",
        f"Scoring {r['settings']['n_test']} images x {r['settings']['n_views']} views against "
        f"{r['settings']['n_train']} training images, embed_dim {8 * r['settings']['width']}, "
        "on given features:",
        "",
        "| scorer | seconds | images / s | peak memory (MiB) |",
        "|---|---|---|---|",
    ]  # fmt: skip
    for key, value in s.items():
        if isinstance(value, dict):
            lines.append(
                f"| {key} | {value['seconds']:.1f} | {value['images_per_s']:.0f} | "
                f"{value['peak_mib']:.0f} |"
            )
    lines += ["", f"Largest difference between our NND scores and scikit-learn's: "
              f"{s['max |con2 nnd - sklearn|']:.1e}."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--n-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-views", type=int, default=40)
    parser.add_argument(
        "--precision-table",
        action="store_true",
        help="float32 against bfloat16 on the CPU (see the docstring)",
    )
    parser.add_argument(
        "--views-table",
        action="store_true",
        help="the views' share of a 128 px RGB step (see views_main)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the precision table")
    parser.add_argument("--threads", type=int, nargs="+", default=list(PRECISION_THREADS),
                        help="the precision table's thread counts")  # fmt: skip
    parser.add_argument("--widths", type=int, nargs="+", default=list(PRECISION_WIDTHS),
                        help="the precision table's network widths")  # fmt: skip
    sizes = [shape[1] for shape in PRECISION_IMAGES.values()]
    parser.add_argument("--image-sizes", type=int, nargs="+", choices=sizes, default=sizes,
                        help="the precision table's images: 28 px grayscale, 64 and 128 px "
                        "RGB (default: all three)")  # fmt: skip
    parser.add_argument("--precision-case", default=None, help=argparse.SUPPRESS)
    add_options(parser, "out", "write-readme")
    options = parse_options(parser)
    case = options.pop("precision_case")
    if case:  # one case, in a process of its own
        print(json.dumps(precision_case(json.loads(case))))
    elif options.pop("views_table"):
        views_main(options["out"], options["write_readme"])
    elif options.pop("precision_table"):
        shapes = {name: shape for name, shape in PRECISION_IMAGES.items()
                  if shape[1] in options["image_sizes"]}  # fmt: skip
        precision_main(options["out"], options["write_readme"], options["rounds"],
                       options["threads"], options["widths"], shapes)  # fmt: skip
    else:
        for name in ("rounds", "threads", "widths", "image_sizes"):
            options.pop(name)
        main(**options)
