"""One parameter at a time around a one-class preset: the evidence behind two defaults.

Varies ``temperature`` and ``n_test_augmentations`` (one at a time, the others as in the
preset) on a few Fashion-MNIST classes, with the one-class protocol of ``_protocol.py``
(train on one class, score the whole test set, AUROC). A setting shared by both sweeps
is trained once.

    python benchmarks/sweep.py --classes 2 6 --write-readme
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _harness import (
    ResultsFile,
    add_options,
    command_line,
    parse_options,
    render_block,
    run_header,
)
from _protocol import PRESET_N_TRAIN, PRESETS, class_images, fashion_mnist, run_con2

from con2.datasets import FASHION_MNIST_CLASSES

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
    rows = [row for cls in classes for row in sweep_class(cls, base, preset, seed, context, data)]
    name = "sweep-" + preset
    out_path = Path(out) if out else ROOT / "results" / f"{name}.json"
    results = ResultsFile(out_path, resume=False)
    results.start_run(command_line(
        "sweep.py", ("--preset", preset), ("--classes", classes), ("--seed", seed),
        ("--context", context),
    ))  # fmt: skip
    X_train_all, y_train, _, _ = fashion_mnist(data)
    n_train = len(class_images(X_train_all, y_train, classes[-1], PRESET_N_TRAIN[preset]))
    results.data.update(name=name, preset=preset, settings=base, context=context, seed=seed,
                        n_train=n_train, rows=rows)  # fmt: skip
    results.save()
    if write_readme:
        render_block(ROOT / "README.md", name, readme_text(results.data))
    return results.data


def sweep_class(cls: int, base: dict, preset: str, seed: int, context: str, data) -> list:
    """One row per (parameter, value) of both sweeps on one class; shared settings train once."""
    X_train_all, y_train, X_test, y_test = fashion_mnist(data)
    normal = class_images(X_train_all, y_train, cls, PRESET_N_TRAIN[preset])  # as oneclass.py
    is_normal = np.where(y_test == cls, 1, -1)
    done, rows = {}, []
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
    return rows


def readme_text(results) -> str:
    lines = [
        f"{run_header(results)}; preset `{results['preset']}` "
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
    add_options(parser, "classes", classes=(2, 6))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", default="vflip")
    add_options(parser, "data", "out", "write-readme")
    main(**parse_options(parser))
