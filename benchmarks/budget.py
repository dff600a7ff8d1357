"""What a CPU budget buys: mean one-class AUROC against minutes of training per class.

Reads one-class result files made with ``oneclass.py --minutes M`` (one per budget) and
plots, for every file whose table covers all ten classes, the mean AUROC over the classes
against the measured training time per class (the mean of the fits' ``fit_seconds``),
with the budget the epochs were priced at as a label; one curve per training precision
(a table trained in bfloat16 says so in its settings). A table trained at another
precision's epochs (``--epochs-of``) compares precisions at equal epochs, not budgets,
and is no point. Measured points only: nothing is interpolated or extrapolated. The
plot goes to ``figures/budget-cpu.png`` and the table into ``README.md``.

    python benchmarks/budget.py benchmarks/results/oneclass-frontier.json \
        benchmarks/results/oneclass-cpu-frontier-*min*.json --write-readme
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _harness import command_line, measured_seconds, parse_options, render_block

ROOT = Path(__file__).resolve().parent
OTHER_SCORER = {"lh": "nnd", "nnd": "lh"}  # the scorer shown beside the chosen one


def points(paths: list, config: str, scorer: str = "lh", seeds=None) -> list:
    """One point per complete table: budget, measured minutes, mean and spread of AUROC.

    ``mean_auroc`` and ``worst_class_auroc`` are the chosen scorer's; ``other_scorer`` is
    the other scorer's mean (same fits), and ``isolation_forest`` the mean of the pixel
    baseline run beside them (None where a file lacks it). ``seeds``: only these seeds'
    rows (so that tables with a second seed on some classes stay comparable).
    """
    other = OTHER_SCORER[scorer]
    found = []
    for path in paths:
        results = json.loads(Path(path).read_text())
        if "--epochs-of" in results.get("command", ""):
            continue  # equal epochs in another precision: not a budget
        kept = [r for r in results["rows"] if seeds is None or r["seed"] in seeds]
        rows = [r for r in kept if config in r]
        classes = sorted({r["class"] for r in rows})
        if classes != list(range(10)):
            continue  # an incomplete table is no point on the curve
        per_class = _class_means(rows, lambda r: r[config][scorer])
        baseline = [r for r in kept if "IsolationForest" in r]
        found.append({
            "file": Path(path).name,
            "precision": results["settings"].get("precision", "float32"),
            "epochs": results["settings"]["n_epochs"],
            "budget_minutes": _budget(results),
            "measured_minutes": float(np.mean([measured_seconds(r[config]) for r in rows]) / 60),
            "mean_auroc": float(np.mean(per_class)),
            "worst_class_auroc": float(np.min(per_class)),
            "other_scorer": float(np.mean(_class_means(rows, lambda r: r[config][other]))),
            "isolation_forest": (
                float(np.mean(_class_means(baseline, lambda r: r["IsolationForest"])))
                if sorted({r["class"] for r in baseline}) == classes else None
            ),
            "seeds": sorted({r["seed"] for r in rows}),
        })  # fmt: skip
    return sorted(found, key=lambda p: p["measured_minutes"])


def _class_means(rows: list, get) -> list:
    """``get(row)`` averaged over the seeds of each class, in class order."""
    classes = sorted({r["class"] for r in rows})
    return [np.mean([get(r) for r in rows if r["class"] == c]) for c in classes]


def _budget(results) -> float | None:
    command = results.get("command", "")
    if "--minutes " not in command:
        return None
    return float(command.split("--minutes ")[1].split()[0])


def plot(found: list, path: Path, title: str, scorer: str = "lh") -> None:
    """Draw the measured points (and a line through them, in order) to ``path``."""
    other = OTHER_SCORER[scorer]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"float32": "tab:blue", "bfloat16": "tab:orange"}
    for precision in dict.fromkeys(p["precision"] for p in found):
        mine = [p for p in found if p["precision"] == precision]
        x = [p["measured_minutes"] for p in mine]
        y = [100 * p["mean_auroc"] for p in mine]
        colour = colours.get(precision, "tab:green")
        ax.plot(x, y, "o-", color=colour,
                label=f"Con2 {precision} ({scorer}), mean over the 10 classes")  # fmt: skip
        ax.plot(x, [100 * p["other_scorer"] for p in mine], "s--", color=colour, alpha=0.5,
                markersize=4, label=f"Con2 {precision} ({other}), same fits")  # fmt: skip
        for p, xi, yi in zip(mine, x, y, strict=True):
            ax.annotate(f"{p['epochs']} epochs", (xi, yi), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)  # fmt: skip
    forest = [p["isolation_forest"] for p in found if p["isolation_forest"] is not None]
    if forest:  # the same for every budget: it does not train
        ax.axhline(100 * float(np.mean(forest)), color="tab:gray", linestyle=":",
                   label="IsolationForest on pixels")  # fmt: skip
    ax.set_xlabel("training minutes per class (measured)")
    ax.set_ylabel("mean AUROC (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(paths: tuple, config: str = "vflip", scorer: str = "lh", out: str | None = None,
         write_readme: bool = False, seeds=None) -> list:  # fmt: skip
    found = points(list(paths), config, scorer, seeds)
    if not found:
        raise SystemExit("no complete ten-class table among the files given")
    figure = Path(out) if out else ROOT / "figures" / "budget-cpu.png"
    plot(found, figure, f"One-class Fashion-MNIST, {config}, 2-core CPU", scorer)
    text = readme_text(found, config, scorer, figure, seeds)
    print(text)
    if write_readme:
        render_block(ROOT / "README.md", "budget-cpu", text)
    return found


def readme_text(found: list, config: str, scorer: str, figure: Path, seeds=None) -> str:
    other = OTHER_SCORER[scorer]
    paths = [f"benchmarks/results/{p['file']}" for p in found]
    lines = [
        f"Configuration `{config}`, scorer `{scorer}`; one point per complete ten-class "
        f"table (`{command_line('budget.py', (None, paths), ('--seeds', seeds))}`). AUROC in "
        "%, mean over the classes.",
        "",
        f"| precision | priced budget (min) | epochs | measured training min per class | "
        f"{scorer} | worst class ({scorer}) | {other} | IsolationForest | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(found, key=lambda p: (p["precision"] != "float32", p["measured_minutes"])):
        budget = "-" if p["budget_minutes"] is None else f"{p['budget_minutes']:g}"
        forest = "-" if p["isolation_forest"] is None else f"{100 * p['isolation_forest']:.1f}"
        lines.append(f"| {p['precision']} | {budget} | {p['epochs']} | "
                     f"{p['measured_minutes']:.1f} | "
                     f"{100 * p['mean_auroc']:.1f} | {100 * p['worst_class_auroc']:.1f} | "
                     f"{100 * p['other_scorer']:.1f} | {forest} | {p['seeds']} |")  # fmt: skip
    try:
        shown = figure.relative_to(ROOT)
    except ValueError:
        shown = figure
    lines += ["", f"![mean AUROC against training minutes]({shown})"]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--config", default="vflip")
    parser.add_argument("--scorer", default="lh", choices=["lh", "nnd"])
    parser.add_argument("--out", default=None)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="only these seeds' rows (default: all, averaged per class)",
    )  # fmt: skip
    main(**parse_options(parser))
