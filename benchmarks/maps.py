"""Where is the anomaly: anomaly maps on Fashion-MNIST, against known masks.

For every class as normal: a detector (the ``cpu-frontier`` setting trained for
``--minutes`` per class) and the class's 1000 normal test images (or the first
``--images``), each turned into an
anomaly of a known kind, on the object (where the image is not background):

- ``patch``: a square of 6 or 10 pixels copied from the same place of a test image of
  another class (what a foreign object looks like);
- ``scratch``: a line 1 or 2 pixels wide, brightened or darkened by 0.5;
- ``blob``: a disc of radius 2 or 4 whose intensity moves by 0.5.

The mask is the set of pixels that changed. Every map method of the detector
(:mod:`con2.maps`, both references) is measured beside two model-free maps, the
absolute difference to the mean training image and to the nearest training image (in
pixels, over all of them), and a random map:

- pixel AUROC over all pixels of the anomalous images, AUPRO (the per-region overlap of
  the MVTec benchmark, integrated to a false-positive rate of 0.3 and divided by it);
- a deletion test of faithfulness: the anomalous images' most anomalous pixels (by the
  map) are replaced by the mean normal image a tenth at a time, and the normality score
  rises; the area between that curve and the same curve for a random order (the larger,
  the more the map found what the detector reacts to);
- the image AUROC of ``score_samples``, anomalous against clean normal test images;
- seconds per 1000 images of each method, against ``score_samples`` on the same images.

    python benchmarks/maps.py --minutes 2 --classes 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _harness import (
    ResultsFile,
    add_options,
    command_line,
    command_lines,
    fan_out,
    parse_options,
    render_block,
    run_header,
)
from _protocol import PRESETS, RESULTS, class_images, epochs_for, fashion_mnist, fit_quietly
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector
from con2.datasets import FASHION_MNIST_CLASSES
from con2.maps import METHODS, REFERENCES

DEFAULT_METHOD = "gradient"  # what Con2Detector.anomaly_maps uses unless told

ROOT = Path(__file__).resolve().parent
KINDS = ("patch", "scratch", "blob")
FPR_LIMIT = 0.3  # AUPRO integrates the overlap up to this false-positive rate
DELETION_STEPS = 10


def synthetic_anomalies(normal: np.ndarray, others: np.ndarray, kind: str, seed: int) -> tuple:
    """Return anomalous copies of ``normal`` (uint8, (n, H, W)) and their masks (bool).

    Each anomaly sits on the object: its centre is a pixel brighter than 0.2 (the
    background of Fashion-MNIST is black). ``others`` are images of other classes.
    """
    rng = np.random.default_rng(seed)
    images, masks = normal.copy(), np.zeros(normal.shape, dtype=bool)
    height, width = normal.shape[1:]
    rows, cols = np.mgrid[:height, :width]
    for i, image in enumerate(normal):
        on = np.argwhere(image > 51)
        cy, cx = on[rng.integers(len(on))] if len(on) else (height // 2, width // 2)
        if kind == "patch":
            size = int(rng.choice([6, 10]))
            top = int(np.clip(cy - size // 2, 0, height - size))
            left = int(np.clip(cx - size // 2, 0, width - size))
            source = others[rng.integers(len(others))]
            images[i, top : top + size, left : left + size] = source[
                top : top + size, left : left + size
            ]
        else:
            if kind == "scratch":
                angle, half = rng.uniform(0, np.pi), int(rng.choice([1, 2])) / 2
                distance = np.abs((rows - cy) * np.cos(angle) - (cols - cx) * np.sin(angle))
                along = np.abs((rows - cy) * np.sin(angle) + (cols - cx) * np.cos(angle))
                region = (distance <= half) & (along <= rng.uniform(5, 10))
            else:
                region = (rows - cy) ** 2 + (cols - cx) ** 2 <= int(rng.choice([2, 4])) ** 2
            shift = 127.5 * (1 if rng.random() < 0.5 else -1)  # 0.5 of the range
            changed = np.clip(image.astype(np.float64) + shift, 0, 255).astype(np.uint8)
            images[i][region] = changed[region]
        masks[i] = images[i] != image
    return images, masks


def aupro(maps: np.ndarray, masks: np.ndarray, limit: float = FPR_LIMIT) -> float:
    """Area under the per-region overlap curve up to false-positive rate ``limit``, over it.

    A region is a connected component (8-connectivity) of a mask. At threshold ``t`` a
    region's overlap is the share of its pixels whose map value is at least ``t``, the
    PRO the mean overlap over all regions of all images, and the false-positive rate the
    share of pixels outside the masks at least ``t``. The curve is exact: every distinct
    map value is a threshold (one sort; a pixel adds ``1 / (n_regions * region size)``
    to the PRO or ``1 / n_background`` to the rate), integrated by trapezoids from rate 0
    to ``limit``, interpolated there.
    """
    weights_pro = np.zeros(maps.shape)
    n_regions = 0
    labelled = np.zeros(maps.shape, dtype=int)
    for i, mask in enumerate(masks):
        labelled[i], count = ndimage.label(mask, structure=np.ones((3, 3)))
        labelled[i][labelled[i] > 0] += n_regions
        n_regions += count
    sizes = np.bincount(labelled.ravel())
    region = labelled > 0
    weights_pro[region] = 1.0 / (n_regions * sizes[labelled[region]])
    weights_fpr = (~masks).astype(float) / np.count_nonzero(~masks)
    order = np.argsort(-maps.ravel(), kind="stable")
    values = maps.ravel()[order]
    ends = np.r_[np.flatnonzero(np.diff(values) != 0), len(values) - 1]  # last of each tie
    fpr = np.r_[0.0, np.cumsum(weights_fpr.ravel()[order])[ends]]
    pro = np.r_[0.0, np.cumsum(weights_pro.ravel()[order])[ends]]
    inside = np.searchsorted(fpr, limit, side="right")  # points with fpr <= limit
    at_limit = np.interp(limit, fpr[inside - 1 : inside + 1], pro[inside - 1 : inside + 1])
    curve_fpr, curve_pro = np.r_[fpr[:inside], limit], np.r_[pro[:inside], at_limit]
    return float(np.trapezoid(curve_pro, curve_fpr) / limit)


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of the map values, anomalous pixels against the others."""
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def deletion_area(det, images: np.ndarray, maps: np.ndarray, mean: np.ndarray, seed: int) -> float:
    """Area between the score curves of deleting by the map and deleting at random.

    Deleting is replacing pixels by the mean normal image, a tenth of them at a time,
    most anomalous first; scores are standardised by the spread of the calibration
    scores, so that the area is comparable between classes.
    """
    rng = np.random.default_rng(seed)
    orders = {
        "map": np.argsort(-maps.reshape(len(maps), -1), axis=1, kind="stable"),
        "random": np.argsort(rng.random(maps.reshape(len(maps), -1).shape), axis=1),
    }
    flat, fill = images.reshape(len(images), -1).astype(np.float32) / 255, mean.ravel()
    curves = {}
    for name, order in orders.items():
        curve = []
        for step in range(DELETION_STEPS + 1):
            deleted = order[:, : round(step / DELETION_STEPS * flat.shape[1])]
            x = flat.copy()
            np.put_along_axis(x, deleted, fill[deleted], axis=1)
            curve.append(det.score_samples(x.reshape(images.shape)).mean())
        curves[name] = np.array(curve)
    spread = det.calibration_scores_.std()
    return float(np.trapezoid(curves["map"] - curves["random"], dx=1 / DELETION_STEPS) / spread)


def model_free_maps(images: np.ndarray, train: np.ndarray, seed: int) -> dict:
    """Return the maps that use no model: differences to the mean and the nearest training image.

    ``images`` and ``train`` are floats in [0, 1], (n, H, W); nearest is in pixels (L2)
    over every training image. The random map is uniform noise.
    """
    flat_train = torch.from_numpy(train.reshape(len(train), -1)).double()
    flat = torch.from_numpy(images.reshape(len(images), -1)).double()
    nearest = torch.cat([torch.cdist(part, flat_train).argmin(dim=1) for part in flat.split(256)])
    return {
        "|x - mean|": np.abs(images - train.mean(axis=0)),
        "|x - nearest|": np.abs(images - train[nearest.numpy()]),
        "random": np.random.default_rng(seed).random(images.shape),
    }


def measure(det, maps: np.ndarray, masks: np.ndarray, images: np.ndarray, mean: np.ndarray,
            n_deletion: int, seed: int) -> dict:  # fmt: skip
    """Pixel AUROC, AUPRO and (on the first ``n_deletion`` images) the deletion area."""
    found = {"pixel_auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks)}
    if n_deletion:
        found["deletion"] = deletion_area(det, images[:n_deletion], maps[:n_deletion], mean, seed)
    return found


def run_unit(cls: int, seed: int, settings: dict, data, kinds: tuple, methods: tuple,
             n_deletion: int, n_images: int | None = None) -> tuple:  # fmt: skip
    """One class: fit, then every kind of anomaly, every map, every metric, and the times.

    ``n_images``: the first that many normal test images of the class (None: all).
    """
    X_train_all, y_train, X_test, y_test = fashion_mnist(data)
    train = class_images(X_train_all, y_train, cls)
    normal, others = X_test[y_test == cls][:n_images], X_test[y_test != cls]
    started = time.perf_counter()
    det = Con2Detector(**settings, random_state=seed)
    fit_quietly(det, train)
    clean = det.score_samples(normal)
    train_unit = train.astype(np.float32) / 255
    mean = train_unit.mean(axis=0)
    result = {}
    for k, kind in enumerate(kinds):
        images, masks = synthetic_anomalies(normal, others, kind, seed=1000 * cls + k)
        tick = time.perf_counter()
        scores = det.score_samples(images)
        seconds = {"score_samples": time.perf_counter() - tick}
        is_normal = np.r_[np.ones(len(clean)), np.zeros(len(scores))]
        found = {"image_auroc": float(roc_auc_score(is_normal, np.r_[clean, scores])),
                 "mask_pixels": float(masks.mean()), "maps": {}}  # fmt: skip
        for method in methods:
            for reference in REFERENCES:
                tick = time.perf_counter()
                maps = det.anomaly_maps(images, method=method, reference=reference)
                name = f"{method} ({reference})"
                seconds[name] = time.perf_counter() - tick
                found["maps"][name] = measure(det, maps, masks, images, mean, n_deletion, seed)
        unit = images.astype(np.float32) / 255
        for name, maps in model_free_maps(unit, train_unit, seed).items():
            found["maps"][name] = measure(det, maps, masks, images, mean, n_deletion, seed)
        found["seconds"] = seconds
        result[kind] = found
    return result, time.perf_counter() - started


def main(minutes: float = 2.0, classes: tuple = tuple(range(10)), seed: int = 0,
         kinds: tuple = KINDS, methods: tuple = METHODS, deletion_images: int = 200,
         images: int | None = None, data: str | None = None, out: str | None = None,
         write_readme: bool = False, dask: str | None = None) -> dict:  # fmt: skip
    """Run the classes the results file does not hold yet; return (and save) all of it."""
    settings = {**PRESETS["cpu-frontier"], "n_epochs": epochs_for("cpu-frontier", minutes)}
    name = f"maps-cpu-{minutes:g}min"
    results = ResultsFile(Path(out) if out else RESULTS / f"{name}.json",
                          {"settings": settings, "minutes": minutes, "kinds": list(kinds),
                           "deletion_images": deletion_images, "images": images})  # fmt: skip
    todo = [c for c in classes if not results.has((c, seed), "kinds")]
    print(f"{len(todo)} classes to run; {settings['n_epochs']} epochs each", flush=True)
    results.start_run(command_line(
        "maps.py", ("--minutes", float(minutes)), ("--classes", classes), ("--seed", seed),
        ("--kinds", None if kinds == KINDS else kinds),
        ("--methods", None if methods == METHODS else methods),
        ("--deletion-images", None if deletion_images == 200 else deletion_images),
        ("--images", images),
        ("--out", out),
    ))  # fmt: skip
    calls = [(c, seed, settings, data, kinds, methods, deletion_images, images) for c in todo]
    for i, (result, seconds) in fan_out(run_unit, calls, dask):
        results.add((todo[i], seed), "kinds", result)
        print(f"class {todo[i]}: {seconds:.0f} s; " + summary_line(result), flush=True)
    final = results.finish()
    if write_readme:
        render_block(ROOT / "README.md", final["name"], readme_text(final))
    return final


def averages(rows: list, metric: str) -> dict:
    """Each map's ``metric`` averaged over the kinds of anomaly, then over the classes."""
    names = list(rows[0]["kinds"][next(iter(rows[0]["kinds"]))]["maps"])
    return {n: float(np.mean([np.mean([k["maps"][n][metric] for k in r["kinds"].values()])
                              for r in rows])) for n in names}  # fmt: skip


def summary_line(result: dict) -> str:
    """One line of a class's result: each map's pixel AUROC / AUPRO, over the kinds."""
    table = {m: averages([{"kinds": result}], m) for m in ("pixel_auroc", "aupro")}
    return ", ".join(f"{n} {100 * table['pixel_auroc'][n]:.1f}/{100 * table['aupro'][n]:.1f}"
                     for n in table["pixel_auroc"])  # fmt: skip


def readme_text(results) -> str:
    """Return the README block: averages of every map, then the default map per class."""
    rows = sorted(results["rows"], key=lambda r: r["class"])
    metrics = {"pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "deletion": "deletion area"}
    table = {m: averages(rows, m) for m in metrics}
    kinds = list(rows[0]["kinds"])
    ratio = {n: np.mean([k["seconds"][n] / k["seconds"]["score_samples"]
                         for r in rows for k in r["kinds"].values()])
             for n in rows[0]["kinds"][kinds[0]]["seconds"] if n != "score_samples"}  # fmt: skip
    lines = [
        f"{run_header(results)}; preset `cpu-frontier` trained {results['minutes']:g} minutes "
        f"per class ({results['settings']['n_epochs']} epochs), seed {rows[0]['seed']}; "
        f"anomalies: {', '.join(kinds)} on "
        + (f"the first {results['images']} of " if results.get("images") else "")
        + "each class's 1000 normal test images. Pixel "
        "AUROC and AUPRO (to FPR 0.3) in %, mean over the kinds and classes; deletion area "
        f"on the first {results['deletion_images']} images of each kind, in calibration "
        "standard deviations (larger: the map finds what the score reacts to); cost: "
        "seconds of the maps over seconds of `score_samples` on the same images.",
        "",
        *command_lines(results),
        "",
        "| map | pixel AUROC | AUPRO | deletion area | cost |",
        "|---|---|---|---|---|",
    ]
    for name in table["pixel_auroc"]:
        cost = f"{ratio[name]:.1f}x" if name in ratio else "-"
        cell = name.replace("|", r"\|")  # a pipe inside a cell ends it
        lines.append(f"| {cell} | {100 * table['pixel_auroc'][name]:.1f} | "
                     f"{100 * table['aupro'][name]:.1f} | {table['deletion'][name]:.2f} | "
                     f"{cost} |")  # fmt: skip
    default = f"{DEFAULT_METHOD} (nearest)"
    lines += ["", f"Per class, `{default}` (the default) against the model-free maps "
              "(pixel AUROC / AUPRO), and the image AUROC of `score_samples`:", "",
              r"| class | default | \|x - mean\| | \|x - nearest\| | image AUROC |",
              "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        cells = []
        for name in (default, "|x - mean|", "|x - nearest|"):
            one = {m: averages([row], m)[name] for m in ("pixel_auroc", "aupro")}
            cells.append(f"{100 * one['pixel_auroc']:.1f} / {100 * one['aupro']:.1f}")
        image = np.mean([k["image_auroc"] for k in row["kinds"].values()])
        lines.append(f"| {row['class']} {FASHION_MNIST_CLASSES[row['class']]} | "
                     + " | ".join(cells) + f" | {100 * image:.1f} |")  # fmt: skip
    if len(rows) < len(FASHION_MNIST_CLASSES):
        lines += ["", f"**Partial:** classes {', '.join(str(r['class']) for r in rows)} only."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    add_options(parser, "classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--deletion-images", type=int, default=200)
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="the first N normal test images of each class (default: all)",
    )
    add_options(parser, "data", "out", "write-readme", "dask")
    main(**parse_options(parser))
