"""One-class Fashion-MNIST benchmark: Con2, its baselines, and pixel-space detectors.

The standard protocol: train on the training images of one class, score the whole test
set, AUROC with that class as normal (labels +1 normal, -1 anomaly). For every class and
seed, in one run:

- Con2 with each requested context; the ``nnd`` and ``lh`` scorers share one trained
  encoder (the scorer is fitted on the same training embeddings);
- ``context=None``: SimCLR (``nnd``) and an SSD-like baseline (``lh``), same machinery;
- IsolationForest, OneClassSVM and LocalOutlierFactor(novelty=True) on raw pixels;
- ``check_context`` of every context on the class's training images.

Results go to a JSON file; ``--write-readme`` also renders the table into
``benchmarks/README.md`` between markers.

    python benchmarks/oneclass.py --preset cpu --classes 0 1 2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from con2 import Con2Detector, GaussianScorer, check_context
from con2._input import validate_images
from con2._training import embed_views
from con2.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

PRESETS = {
    # The whole table (10 classes x 4 trainings x 2 seeds) in 41 minutes on 2 CPU
    # cores: width 8, 5 epochs of batch 128 on 2000 of the 6000 training images, 8 views.
    "cpu": dict(base_width=8, n_epochs=5, batch_size=128, n_test_augmentations=8),
    # All 6000 training images, width 8, 8 epochs of batch 256, 8 views: about 2 minutes
    # of training per class on 2 CPU cores.
    "cpu-6000": dict(base_width=8, n_epochs=8, batch_size=256, n_test_augmentations=8),
    # The paper's budget [appendix E]: ResNet18, 2048 epochs, batch 512, A = 40.
    "gpu": dict(base_width=64, n_epochs=2048, batch_size=512, n_test_augmentations=40),
}
PRESET_N_TRAIN = {"cpu": 2000, "cpu-6000": None, "gpu": None}
CONTEXTS = ("vflip", "invert", "equalize", None)
BASELINES = {
    "IsolationForest": lambda seed: IsolationForest(random_state=seed),
    "OneClassSVM": lambda seed: OneClassSVM(gamma="scale", nu=0.1),
    "LOF": lambda seed: LocalOutlierFactor(novelty=True),
}
ROOT = Path(__file__).resolve().parent


def run_con2(X_train, X_test, is_normal, context, settings, seed):
    """Fit Con2 once and return AUROCs of both scorers and the fit time.

    Both scorers see the same encoder and the same test-time views: the fitted ``nnd``
    scorer as ``score_samples`` uses it (training images recognised and left out), and a
    Gaussian scorer fitted on the same training embeddings. One embedding pass of the
    test set serves both (library internals; the public API would embed twice).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # context warnings: check_context below
        start = time.perf_counter()
        det = Con2Detector(context=context, scorer="nnd", random_state=seed, **settings)
        det.fit(X_train)
        fit_seconds = time.perf_counter() - start
    size = det._forward_size(det.device_)
    train, test = (validate_images(det, X, reset=False) for X in (X_train, X_test))
    z_train = embed_views(det.encoder_, train, det.views_, size, det.device_)
    z_test = embed_views(det.encoder_, test, det.views_, size, det.device_)
    exclude = det._train_index.lookup(test).to(z_test.device)
    nnd = det.scorer_.score_samples(z_test, exclude).cpu().numpy()
    lh = GaussianScorer().fit(z_train).score_samples(z_test).cpu().numpy()
    return {
        "nnd": roc_auc_score(is_normal, nnd),
        "lh": roc_auc_score(is_normal, lh),
        "fit_seconds": fit_seconds,
    }


def main(
    preset: str = "cpu",
    classes: tuple = tuple(range(10)),
    seeds: tuple = (0,),
    contexts: tuple = CONTEXTS,
    n_train: int | str | None = "preset",
    data: str | None = None,
    out: str | None = None,
    write_readme: bool = False,
) -> dict:
    """Run the benchmark and return (and save) its results."""
    settings = dict(PRESETS[preset])
    if n_train == "preset":
        n_train = PRESET_N_TRAIN[preset]
    started = time.perf_counter()
    X_train_all, y_train, X_test, y_test = load_fashion_mnist(data)
    pixels_test = X_test.reshape(len(X_test), -1) / 255.0
    rows = []
    for cls in classes:
        normal = X_train_all[y_train == cls]
        if n_train is not None:
            normal = normal[np.random.default_rng(0).permutation(len(normal))[:n_train]]
        is_normal = np.where(y_test == cls, 1, -1)
        checks = {str(c): vars_of(check_context(normal, c)) for c in contexts if c is not None}
        for seed in seeds:
            row = {"class": cls, "seed": seed, "n_train": len(normal), "checks": checks}
            for context in contexts:
                result = run_con2(normal, X_test, is_normal, context, settings, seed)
                row[str(context)] = result
                print(f"class {cls} seed {seed} context {context}: {fmt(result)}", flush=True)
            pixels = normal.reshape(len(normal), -1) / 255.0
            for name, make in BASELINES.items():
                model = make(seed).fit(pixels)
                row[name] = roc_auc_score(is_normal, model.score_samples(pixels_test))
            print(f"class {cls} seed {seed} baselines: "
                  + ", ".join(f"{k} {row[k]:.3f}" for k in BASELINES), flush=True)  # fmt: skip
            rows.append(row)
    results = {
        "date": date.today().isoformat(),
        "hardware": hardware(),
        "preset": preset,
        "settings": settings,
        "n_train": n_train,
        "command": command_line(preset, classes, seeds, contexts, n_train, out),
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }
    out_path = Path(out) if out else ROOT / "results" / f"oneclass-{preset}.json"
    results["name"] = out_path.stem
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    if write_readme:
        render_readme(results)
    return results


def parse_n_train(text: str):
    """``"preset"``, ``"all"`` (None) or a number of images."""
    return {"preset": "preset", "all": None}[text] if text in ("preset", "all") else int(text)


def vars_of(report):
    return {"distinctiveness": report.distinctiveness, "alignment": report.alignment}


def fmt(result):
    return f"nnd {result['nnd']:.3f}, lh {result['lh']:.3f} ({result['fit_seconds']:.0f} s fit)"


def hardware() -> str:
    """Describe the GPU, or the CPU model and the number of threads torch uses."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} threads (CPU)"


def command_line(preset, classes, seeds, contexts, n_train, out=None) -> str:
    parts = [f"python benchmarks/oneclass.py --preset {preset}"]
    parts.append("--classes " + " ".join(map(str, classes)))
    parts.append("--seeds " + " ".join(map(str, seeds)))
    parts.append("--contexts " + " ".join(str(c) for c in contexts))
    parts.append(f"--n-train {'all' if n_train is None else n_train}")
    if out is not None:
        parts.append(f"--out {out}")
    return " ".join(parts)


def table(results) -> str:
    """Markdown table: one row per class (mean over seeds), one column per method."""
    rows = results["rows"]
    methods = [(str(c), s) for c in CONTEXTS for s in ("nnd", "lh") if str(c) in rows[0]]
    names = [f"{'SimCLR' if c == 'None' and s == 'nnd' else 'SSD-like' if c == 'None' else c} {s}"
             for c, s in methods] + list(BASELINES)  # fmt: skip
    lines = ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    columns = {name: [] for name in names}
    spreads = {name: [] for name in names}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        per_seed = [[r[c][s] for r in mine] for c, s in methods]
        per_seed += [[r[b] for r in mine] for b in BASELINES]
        values = [np.mean(v) for v in per_seed]
        for name, v in zip(names, per_seed, strict=True):
            spreads[name].append(np.std(v, ddof=1) if len(v) > 1 else np.nan)
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
        best = max(values)
        cells = [f"**{100 * v:.1f}**" if v == best else f"{100 * v:.1f}" for v in values]
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[cls]} | " + " | ".join(cells) + " |")
    means = [np.mean(columns[name]) for name in names]
    lines.append("| **mean** | " + " | ".join(f"{100 * m:.1f}" for m in means) + " |")
    if len({r["seed"] for r in rows}) > 1:
        stds = [np.mean(spreads[name]) for name in names]
        lines.append("| std over seeds (mean over classes) | "
                     + " | ".join(f"{100 * s:.1f}" for s in stds) + " |")  # fmt: skip
    return "\n".join(lines)


def check_table(results) -> str:
    """Markdown table: check_context of every context on each class's training images."""
    rows = results["rows"]
    names = list(rows[0]["checks"])
    header = " | ".join(f"{n} distinct. | {n} align." for n in names)
    lines = [f"| class | {header} |", "|---" * (2 * len(names) + 1) + "|"]
    for cls in sorted({r["class"] for r in rows}):
        checks = next(r for r in rows if r["class"] == cls)["checks"]
        cells = " | ".join(
            f"{checks[n]['distinctiveness']:.3f} | {checks[n]['alignment']:.3f}" for n in names
        )
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[cls]} | {cells} |")
    return "\n".join(lines)


def render_readme(results) -> None:
    body = "\n".join([
        f"Run {results['date']} on {results['hardware']}; preset `{results['preset']}` "
        f"({', '.join(f'{k}={v}' for k, v in results['settings'].items())}); "
        f"seeds {sorted({r['seed'] for r in results['rows']})}; "
        f"{results['rows'][0]['n_train']} training images per class. AUROC in %, mean over "
        "seeds, best per class in bold.",
        "",
        f"    {results['command']}",
        "",
        table(results),
        "",
        "`check_context` on each class's training images (distinctiveness: 0.5 = invisible, "
        "1 = always told apart; alignment: rank correlation of distances; a context passes "
        "at 0.75 and 0.7):",
        "",
        check_table(results),
    ])  # fmt: skip
    render_block(ROOT / "README.md", results["name"], body)


def render_block(readme: Path, name: str, body: str) -> None:
    """Put ``body`` between the ``<!-- name -->`` markers of ``readme`` (or append it)."""
    marker = f"<!-- {name} -->"
    block = f"{marker}\n{body}\n{marker}"
    text = readme.read_text() if readme.exists() else ""
    if marker in text:
        before, _, rest = text.partition(marker)
        _, _, after = rest.partition(marker)
        text = before + block + after
    else:
        text = text + "\n" + block + "\n"
    readme.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--contexts", nargs="+", default=[str(c) for c in CONTEXTS])
    parser.add_argument(
        "--n-train", default="preset",
        help="training images per class (a random subset); 'preset' or 'all'",
    )  # fmt: skip
    parser.add_argument("--data", default=None, help="folder of the IDX files")
    parser.add_argument("--out", default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    main(
        preset=args.preset,
        classes=tuple(args.classes),
        seeds=tuple(args.seeds),
        contexts=tuple(None if c == "None" else c for c in args.contexts),
        n_train=parse_n_train(args.n_train),
        data=args.data,
        out=args.out,
        write_readme=args.write_readme,
    )
