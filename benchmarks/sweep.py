"""One parameter at a time around a one-class preset: the evidence behind two defaults.

Varies ``temperature`` and ``n_test_augmentations`` (one at a time, the others as in the
preset) on a few Fashion-MNIST classes, with the one-class protocol of ``oneclass.py``
(train on one class, score the whole test set, AUROC). A setting shared by both sweeps
is trained once.

    python benchmarks/sweep.py --classes 2 6 --write-readme
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
from oneclass import PRESET_N_TRAIN, PRESETS, hardware, render_block, run_con2

from con2.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

ROOT = Path(__file__).resolve().parent
SWEEPS = {"temperature": (0.1, 0.2, 0.5), "n_test_augmentations": (8, 16, 40)}


def main(
    preset: str = "cpu",
    classes: tuple = (2, 6),
    seed: int = 0,
    context: str = "vflip",
    data: str | None = None,
    out: str | None = None,
    write_readme: bool = False,
) -> dict:
    """Run both sweeps on every class and return (and save) the AUROCs."""
    base = {"temperature": 0.2, **PRESETS[preset]}
    X_train_all, y_train, X_test, y_test = load_fashion_mnist(data)
    rows = []
    for cls in classes:
        normal = X_train_all[y_train == cls]
        n_train = PRESET_N_TRAIN[preset]
        if n_train is not None:  # the same subset as oneclass.py
            normal = normal[np.random.default_rng(0).permutation(len(normal))[:n_train]]
        is_normal = np.where(y_test == cls, 1, -1)
        done = {}
        for name, values in SWEEPS.items():
            for value in values:
                settings = {**base, name: value}
                key = json.dumps(settings, sort_keys=True)
                if key not in done:
                    done[key] = run_con2(normal, X_test, is_normal, context, settings, seed)
                result = done[key]
                rows.append({"class": cls, "parameter": name, "value": value, **result})
                print(f"class {cls} {name}={value}: nnd {result['nnd']:.3f}, "
                      f"lh {result['lh']:.3f}", flush=True)  # fmt: skip
    classes_arg = " ".join(map(str, classes))
    results = {
        "name": "sweep-" + preset,
        "date": date.today().isoformat(),
        "hardware": hardware(),
        "preset": preset,
        "settings": base,
        "context": context,
        "seed": seed,
        "n_train": len(normal),
        "command": f"python benchmarks/sweep.py --preset {preset} --classes {classes_arg} "
        f"--seed {seed} --context {context}",
        "rows": rows,
    }
    out_path = Path(out) if out else ROOT / "results" / f"{results['name']}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    if write_readme:
        render_block(ROOT / "README.md", results["name"], readme_text(results))
    return results


def readme_text(results) -> str:
    lines = [
        f"Run {results['date']} on {results['hardware']}; preset `{results['preset']}` "
        f"({', '.join(f'{k}={v}' for k, v in results['settings'].items())}), context "
        f"`{results['context']}`, seed {results['seed']}, {results['n_train']} training "
        "images per class; one parameter changed at a time. AUROC in %, nnd / lh.",
        "",
        f"    {results['command']}",
        "",
    ]
    classes = sorted({r["class"] for r in results["rows"]})
    by_key = {(r["class"], r["parameter"], r["value"]): r for r in results["rows"]}
    for name, values in SWEEPS.items():
        header = " | ".join(f"{name}={v}" for v in values)
        lines += [f"| class | {header} |", "|---" * (len(values) + 1) + "|"]
        for cls in classes:
            cells = []
            for value in values:
                row = by_key[cls, name, value]
                cells.append(f"{100 * row['nnd']:.1f} / {100 * row['lh']:.1f}")
            lines.append(f"| {cls} {FASHION_MNIST_CLASSES[cls]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", default="vflip")
    parser.add_argument("--data", default=None, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--out", default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    main(**{**vars(args), "classes": tuple(args.classes)})
