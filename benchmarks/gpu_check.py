"""The first GPU run, in one command of at most 8 minutes: what only a GPU can show.

On a machine with CUDA, each check below is recorded in ``results/gpu-check.json`` and
the README block ``gpu-check``:

1. fit and scoring on CUDA with both scorers (``precision="auto"``: bfloat16 autocast,
   channels-last, TF32), digit 0 against the other digits: AUROC and seconds;
2. training images per second at width 64 on 32 px RGB images in batches of 512: the
   library's step (its own ``epoch_seconds_``) against the backbone's forward and
   backward alone on the same views, same precision and memory format;
3. ``compile=True``: seconds per epoch after the first, against the same fit eager;
4. a model fitted on the GPU, pickled and scored in a process that sees no GPU: the same
   scores;
5. the ONNX export of that model, scored by ONNX Runtime: the same scores;
6. the distributed path on NCCL, in one process under torchrun.

``--dry-run`` runs the same code paths on the CPU at toy size (gloo for NCCL), for CI.
Without CUDA and without ``--dry-run`` it writes the block "not measured".

    python benchmarks/gpu_check.py --write-readme
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _harness import (
    ResultsFile,
    add_options,
    command_line,
    parse_options,
    render_block,
    run_header,
)
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2.augment import SimCLRAugment
from con2.datasets import load_digits_images
from con2.networks import resnet18

ROOT = Path(__file__).resolve().parent
FULL = dict(width=64, size=32, batch=512, n_steps=4, epochs=3)
TOY = dict(width=2, size=16, batch=8, n_steps=2, epochs=2)


def quietly(fit):
    """Run ``fit()`` without context warnings (random pixels suit no context)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fit()


def fit_and_score(device: str, size: dict) -> dict:
    """Check 1: both scorers, digit 0 as normal, fitted and scored on ``device``."""
    X, y = load_digits_images()
    train, test, is_normal = X[y == 0][:150], X[150:], np.where(y[150:] == 0, 1, -1)
    found = {}
    for scorer in ("nnd", "lh"):
        det = Con2Detector(context="invert", scorer=scorer, base_width=size["width"],
                           n_epochs=size["epochs"], batch_size=64, device=device,
                           random_state=0)  # fmt: skip
        started = time.perf_counter()
        quietly(lambda det=det: det.fit(train))
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        scores = det.score_samples(test)
        found[scorer] = {"auroc": roc_auc_score(is_normal, scores), "fit_s": fitted,
                         "score_s": time.perf_counter() - started,
                         "precision": det.precision_}  # fmt: skip
    return found


def throughput(device: str, size: dict) -> dict:
    """Measure checks 2 and 3: images per second of a step, the backbone, compiled fits."""
    width, side, batch, n_steps = size["width"], size["size"], size["batch"], size["n_steps"]
    X = np.random.default_rng(0).integers(0, 256, (batch * n_steps, 3, side, side), np.uint8)

    def per_second(compile_):
        det = Con2Detector(context="vflip", base_width=width, batch_size=batch,
                           n_epochs=size["epochs"], n_test_augmentations=2, device=device,
                           compile=compile_, random_state=0)  # fmt: skip
        quietly(lambda: det.fit(X))
        return batch * n_steps / float(np.median(det.epoch_seconds_[1:])), det.precision_

    eager, precision = per_second(False)
    compiled, _ = per_second(True)
    return {"step_images_per_s": eager, "backbone_images_per_s": backbone_speed(X, size, device,
            precision), "compiled_images_per_s": compiled, "precision": precision}  # fmt: skip


def backbone_speed(X, size: dict, device: str, precision: str) -> float:
    """Images per second of the backbone's forward and backward alone, on pre-made views."""
    dev = torch.device(device)
    x = torch.from_numpy(X[: size["batch"]]).float().div(255)
    stacked = torch.cat([x, x.flip(-2)]).repeat(2, 1, 1, 1)  # 4 views per image, as a step
    augment = SimCLRAugment()
    params = augment.sample(len(stacked), tuple(x.shape[-2:]), torch.Generator().manual_seed(1))
    layout = torch.channels_last if dev.type == "cuda" or precision == "bfloat16" else None
    views = ((augment.apply(stacked, params) - 0.5) / 0.5).to(dev)
    backbone = resnet18(tuple(x.shape[1:]), size["width"]).to(dev)
    if layout is not None:
        views, backbone = views.contiguous(memory_format=layout), backbone.to(memory_format=layout)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    seconds = []
    for _ in range(size["n_steps"] + 1):  # the first is a warm-up
        with _synchronised(dev, seconds):
            backbone.zero_grad(set_to_none=True)
            with autocast:
                h = backbone(views)
            h.float().sum().backward()
    return size["batch"] / float(np.median(seconds[1:]))


@contextlib.contextmanager
def _synchronised(device, seconds: list):
    """Time the block, waiting for the device at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds.append(time.perf_counter() - started)


def portability(device: str, size: dict, folder: Path) -> dict:
    """Check 4 and 5: pickled and scored without a GPU, exported and scored by ONNX Runtime."""
    X, y = load_digits_images()
    det = Con2Detector(context="invert", base_width=size["width"], n_epochs=size["epochs"],
                       batch_size=64, device=device, random_state=0)  # fmt: skip
    quietly(lambda: det.fit(X[y == 0][:150]))
    # images the model did not train on: the graph scores every image as new
    test = np.concatenate([X[y == 0][150:], X[y != 0][:50]])
    here = det.score_samples(test)
    (folder / "det.pkl").write_bytes(pickle.dumps(det))
    np.save(folder / "test.npy", test)
    script = ("import pickle, sys, warnings, numpy as np\nwarnings.simplefilter('ignore')\n"
              f"det = pickle.loads(open({str(folder / 'det.pkl')!r}, 'rb').read())\n"
              f"np.save({str(folder / 'cpu.npy')!r}, det.score_samples(np.load("
              f"{str(folder / 'test.npy')!r})))\nprint(det.device_)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=True)  # fmt: skip
    on_cpu = np.load(folder / "cpu.npy")
    det.export(folder / "det.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "det.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"images": test[:, None]})[0]
    return {
        "loaded_on": done.stdout.strip(),
        "cpu_max_relative_difference": float(np.max(np.abs(on_cpu - here) / np.abs(here))),
        "onnx_max_relative_difference": float(np.max(np.abs(onnx - here) / np.abs(here))),
    }


WORKER = """
import os, sys, warnings, numpy as np, torch, torch.distributed as dist
warnings.simplefilter("ignore")
from con2 import Con2Detector
from con2.datasets import load_digits_images
X, y = load_digits_images()
det = Con2Detector(context="invert", base_width={width}, n_epochs=2, batch_size=32,
                   n_test_augmentations=4, device="{device}", distributed=True, random_state=0)
det.fit(X[y == 0][:64])
print(dist.get_backend(), dist.get_world_size(), np.isfinite(det.loss_curve_).all())
"""


def distributed(device: str, size: dict, folder: Path) -> dict:
    """Check 6: the distributed path in one process under torchrun (NCCL on CUDA)."""
    script = folder / "worker.py"
    script.write_text(WORKER.format(width=size["width"], device=device))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=1", str(script)], capture_output=True, text=True,
                          check=True, timeout=300)  # fmt: skip
    backend, world, finite = done.stdout.split()[-3:]
    return {"backend": backend, "world_size": int(world), "finite_losses": finite == "True"}


def main(dry_run: bool = False, out: str | None = None, write_readme: bool = False) -> dict:
    """Run every check (or, without CUDA and a dry run, record that nothing was measured)."""
    cuda = torch.cuda.is_available()
    device, size = ("cpu", TOY) if dry_run else ("cuda", FULL)
    name = "gpu-check" + ("-dry-run" if dry_run else "")
    results = ResultsFile(Path(out) if out else ROOT / "results" / f"{name}.json", resume=False)
    results.start_run(command_line("gpu_check.py", ("--dry-run", dry_run)),
                      device=torch.device(device if cuda or dry_run else "cpu"))  # fmt: skip
    if not cuda and not dry_run:
        results.data["measured"] = False
    else:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            results.data.update(measured=True, fit=fit_and_score(device, size),
                                throughput=throughput(device, size),
                                portability=portability(device, size, Path(folder)),
                                distributed=distributed(device, size, Path(folder)))  # fmt: skip
        results.data["seconds"] = time.perf_counter() - started
    results.save()
    if write_readme:
        render_block(ROOT / "README.md", name, readme_text(results.data))
    return results.data


def readme_text(r) -> str:
    """Return the README block: every check's figure, or "not measured"."""
    if not r["measured"]:
        return (
            f"{run_header(r)}: not measured (no GPU). On the first machine with one, run "
            "`python benchmarks/gpu_check.py --write-readme` (at most 8 minutes)."
        )
    fit, speed, port, ddp = r["fit"], r["throughput"], r["portability"], r["distributed"]
    return "\n".join([
        f"{run_header(r)}; {r['seconds']:.0f} s in all.", "", f"    {r['command']}", "",
        "| check | result |", "|---|---|",
        *(f"| fit and score, `{s}` ({fit[s]['precision']}) | AUROC {fit[s]['auroc']:.3f}, fit "
          f"{fit[s]['fit_s']:.1f} s, scoring {fit[s]['score_s']:.2f} s |" for s in ("nnd", "lh")),
        f"| training step, images/s ({speed['precision']}) | {speed['step_images_per_s']:.0f}"
        f" (backbone alone {speed['backbone_images_per_s']:.0f}: overhead "
        f"{speed['backbone_images_per_s'] / speed['step_images_per_s']:.2f}x) |",
        f"| `compile=True`, images/s | {speed['compiled_images_per_s']:.0f} |",
        f"| pickled, scored without a GPU | on {port['loaded_on']}, largest relative "
        f"difference {port['cpu_max_relative_difference']:.1e} |",
        f"| ONNX Runtime | largest relative difference "
        f"{port['onnx_max_relative_difference']:.1e} |",
        f"| torchrun, one process | {ddp['backend']}, world {ddp['world_size']}, finite losses "
        f"{ddp['finite_losses']} |",
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same code paths on the CPU at toy size (for CI)")  # fmt: skip
    add_options(parser, "out", "write-readme")
    main(**parse_options(parser))
