"""Training and scoring speed, measured as ratios side by side in one run.

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

    python benchmarks/throughput.py --width 64 --write-readme
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
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
from con2.networks import Encoder, ResNet18
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


def training_precision(device):
    """Return the autocast ``fit`` trains in: bf16 on CUDA (TF32 allowed), none on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.autocast("cuda", dtype=torch.bfloat16)


def con2_runners(device, width, batch_size, size, channels, n_steps):
    """Return callables running n_steps of Con2 and of the backbone alone; each returns seconds.

    Con2 is ``Con2Detector.fit``, warm-started for one epoch of ``n_steps`` steps at a
    time (a fresh AdamW state each epoch, as a warm start has); its time is the fit's own
    record of the epoch, without the scorer's fit that follows.
    """
    X = images(n_steps * batch_size, size, channels).numpy()
    det = Con2Detector(context="vflip", base_width=width, batch_size=batch_size, n_epochs=1,
                       n_test_augmentations=2, device=device.type, random_state=0,
                       warm_start=True)  # fmt: skip
    backbone = ResNet18(channels, width).to(device)
    if device.type == "cuda":
        backbone = backbone.to(memory_format=torch.channels_last)
    # The backbone sees real views (augmented images in both contexts), made before timing.
    x = torch.from_numpy(X[:batch_size]).float().div(255)
    stacked = torch.cat([x, x.flip(-2)]).repeat(2, 1, 1, 1)
    augment = SimCLRAugment()
    params = augment.sample(len(stacked), (size, size), torch.Generator().manual_seed(1))
    views = ((augment.apply(stacked, params) - 0.5) / 0.5).to(device)
    if device.type == "cuda":
        views = views.contiguous(memory_format=torch.channels_last)

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
            with training_precision(device):
                h = backbone(views)
            h.float().sum().backward()
        sync(device)
        return time.perf_counter() - start

    return con2_epoch, backbone_steps


def training_speed(device, width, batch_size, size, channels, n_steps, repeats, workers):
    """Seconds per step of Con2, the backbone alone and the conventional pipeline.

    The three run in turn, ``repeats`` rounds after a warm-up round, so that a slow
    moment of a shared machine hits all of them; the medians are compared.
    """
    con2_epoch, backbone_steps = con2_runners(device, width, batch_size, size, channels, n_steps)
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


def profile_step(device, width, batch_size, size, channels) -> dict:
    """Milliseconds per part of one Con2 step, from ``torch.profiler`` ranges."""
    con2_epoch, _ = con2_runners(device, width, batch_size, size, channels, n_steps=2)
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
    add_options(parser, "out", "write-readme")
    main(**parse_options(parser))
