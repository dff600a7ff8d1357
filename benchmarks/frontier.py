"""Where a CPU budget is best spent: one factor at a time against a shared setting.

Every level trains for the same number of seconds of a 2-core CPU per class (``--budget``):
its number of epochs is the budget divided by the measured seconds per epoch of that
setting (``results/cost-cpu-frontier.json``, made by ``cost.py --group frontier``), so
"width 16" means fewer epochs of a wider network, not more compute. The shared setting is
the ``cpu-6000`` preset's (vflip, width 8, batch 256, 28 px, all 6000 images of the
class); each level changes one thing. Every fit embeds 40 test-time views and is also
scored with 8 and 16 of them, with both scorers, so views and scorers are read off the
same fits. Results go to ``results/frontier-study.json`` one fit at a time, and the same
command run again continues where it stopped (``_harness.ResultsFile``); ``--dask local``
runs one single-threaded fit per CPU at once.

    python benchmarks/frontier.py --classes 0 2 5 6 --seeds 0 --budget 180
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _harness import (
    Eta,
    ResultsFile,
    add_options,
    command_line,
    command_lines,
    fan_out,
    parallel_fits,
    parse_options,
    render_block,
    run_header,
)
from _protocol import fashion_mnist, run_con2

from con2.datasets import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parent
BASE = dict(context="vflip", base_width=8, batch_size=256, n_test_augmentations=40)
# level -> (what it changes, the cost-table row that prices one epoch of it)
# In the order they run: level after level over all classes, most telling first, so that
# a partial study already compares the main levels on every class.
LEVELS = {
    "base": ({}, "w8"),
    "batch 64": ({"batch_size": 64}, "w8 b64"),
    "batch 128": ({"batch_size": 128}, "w8 b128"),
    "vflip+invert": ({"context": ["vflip", "invert"]}, "w8 vflip+invert"),
    "invert": ({"context": "invert"}, "w8"),
    "20 px": ({"image_size": 20}, "w8 20px"),
    "width 16": ({"base_width": 16}, "w16"),
    # two factors at once: on this CPU a wider network costs less per image in batches of
    # 128 (cost-cpu-frontier.json), so width 16 is also tried where it is cheapest
    "width 16 + batch 128": ({"base_width": 16, "batch_size": 128}, "w16 b128"),
    "batch 512": ({"batch_size": 512}, "w8 b512"),
}
VIEW_COUNTS = (8, 16)


def level_settings(level: str, budget: float, costs: dict) -> dict:
    """Detector settings of a level at ``budget`` seconds of training per class."""
    change, cost_row = LEVELS[level]
    per_epoch = costs[cost_row]["seconds_per_epoch_6000"]
    return {**BASE, **change, "n_epochs": max(1, round(budget / per_epoch))}


def main(
    classes: tuple = (0, 2, 5, 6),
    seeds: tuple = (0,),
    levels: tuple = tuple(LEVELS),
    budget: float = 180.0,
    costs: str | None = None,
    data: str | None = None,
    out: str | None = None,
    write_readme: bool = False,
    dask: str | None = None,
    readme_only: bool = False,
) -> dict:
    """Run what the results file does not hold yet; return (and save) all its results.

    ``dask``: fan the fits out over a Dask cluster (``"local"``: one single-threaded
    worker per CPU; see ``_harness.fan_out``). ``readme_only``: run nothing, only write
    the README block of what the results file holds (an unfinished study says so).
    """
    out_path = Path(out) if out else ROOT / "results" / "frontier-study.json"
    if readme_only:
        final = json.loads(out_path.read_text())
        render_block(ROOT / "README.md", "frontier-study", readme_text(final))
        return final
    cost_path = Path(costs) if costs else ROOT / "results" / "cost-cpu-frontier.json"
    cost_rows = json.loads(cost_path.read_text())["rows"]
    plan = {level: level_settings(level, budget, cost_rows) for level in levels}
    identity = {"preset": "frontier-study", "settings": {"budget_seconds": budget, **BASE},
                "n_train": None}  # fmt: skip
    results = ResultsFile(out_path, identity)
    units = [(c, s, level) for level in levels for c in classes for s in seeds]
    todo = [u for u in units if not results.has(u[:2], u[2])]
    print(f"{len(units) - len(todo)} of {len(units)} fits already in {out_path}; "
          f"{len(todo)} to run", flush=True)  # fmt: skip
    results.start_run(command_line(*command_options(classes, seeds, levels, budget, out)))
    # a run of some levels keeps what earlier runs of the others recorded
    results.data["levels"] = {**results.data.get("levels", {}), **plan}
    for cls, seed in dict.fromkeys((c, s) for c, s, _ in todo if not results.has((c, s))):
        _, y_train, _, _ = fashion_mnist(data)
        results.add_row((cls, seed), n_train=int(np.sum(y_train == cls)))
    calls = [(cls, seed, plan[level], VIEW_COUNTS, data) for cls, seed, level in todo]
    clock = Eta(todo, parallel_fits(dask))
    for i, (result, seconds) in fan_out(fit_level, calls, dask):
        cls, seed, level = todo[i]
        epochs = plan[level]["n_epochs"]
        results.add((cls, seed), level, {**result, "n_epochs": epochs})
        print(f"class {cls} seed {seed} {level}: nnd {result['nnd']:.3f}, lh "
              f"{result['lh']:.3f} ({epochs} epochs); {clock.tick(level, seconds)}",
              flush=True)  # fmt: skip
    final = results.finish()
    if write_readme:
        render_block(ROOT / "README.md", "frontier-study", readme_text(final))
    return final


def fit_level(cls: int, seed: int, settings: dict, view_counts: tuple, data) -> tuple:
    """One fit of the study: its result and its seconds (here or on a Dask worker)."""
    X_train_all, y_train, X_test, y_test = fashion_mnist(data)
    settings = dict(settings)
    context = settings.pop("context")
    is_normal = np.where(y_test == cls, 1, -1)
    started = time.perf_counter()
    result = run_con2(X_train_all[y_train == cls], X_test, is_normal, context, settings, seed,
                      view_counts)  # fmt: skip
    return result, time.perf_counter() - started


def command_options(classes, seeds, levels, budget, out) -> tuple:
    """Return the script and options of the command that reruns a study (``command_line``)."""
    named = " ".join(f'"{lv}"' for lv in levels) if tuple(levels) != tuple(LEVELS) else None
    return ("frontier.py", ("--classes", classes), ("--seeds", seeds), ("--budget", budget),
            ("--levels", named), ("--out", out))  # fmt: skip


def cells(rows, level: str, key: tuple) -> list:
    """AUROCs of ``level`` for every (class, seed) that has it, at ``key`` in its result."""
    found = []
    for row in rows:
        value = row.get(level)
        for part in key:
            value = None if value is None else value.get(part)
        if value is not None:
            found.append(((row["class"], row["seed"]), value))
    return found


def readme_text(results) -> str:
    """Markdown: per level, the mean AUROC and its paired difference from the base."""
    rows = results["rows"]
    plan = {level: results["levels"][level] for level in LEVELS if level in results["levels"]}
    pairs = sorted({(r["class"], r["seed"]) for r in rows})
    seeds = sorted({s for _, s in pairs})
    by_seed = len(seeds) > 1
    lines = [
        f"{run_header(results)}; {results['settings']['budget_seconds']:g} s of "
        "training per class and level (2 CPU threads, priced by "
        "`results/cost-cpu-frontier.json`); classes "
        f"{', '.join(f'{c} {FASHION_MNIST_CLASSES[c]}' for c in sorted({c for c, _ in pairs}))}"
        f"; seeds {seeds}. AUROC in %: mean over the (class, seed) a level ran on and, "
        "in brackets, the mean paired difference from the base on the same (class, seed) "
        "with its standard error; levels that ran on fewer seeds than the base are "
        "compared by that difference, not by their means. "
        "Training seconds are as measured, at the threads named here and under whatever "
        "ran beside the fit; the budget is the priced one.",
        "",
        *command_lines(results),
        "",
        "| level | epochs | training s (measured) | nnd, 40 views | lh, 40 views | lh, 16 views "
        "| lh, 8 views |"
        + (" lh, 40 views: paired difference, seed by seed |" if by_seed else "")
        + " fits (seeds) |",
        "|---" * (9 if by_seed else 8) + "|",
    ]
    lines += [level_line(rows, level, plan[level], seeds) for level in plan
              if any(level in r for r in rows)]  # fmt: skip
    unfinished = [level for level in plan
                  if 0 < len(cells(rows, level, ("lh",))) < len(pairs)
                  or not any(level in r for r in rows)]  # fmt: skip
    if unfinished:
        lines += ["", "**Partial:** the study has not run (or not finished) on every "
                  f"(class, seed): {', '.join(unfinished)}."]  # fmt: skip
    return "\n".join([*lines, "", *class_table(rows, plan)])


def level_line(rows, level: str, settings: dict, seeds: list) -> str:
    """Return a level's row: epochs, seconds, each column's mean and difference, seeds."""
    columns = [column(rows, level, key)
               for key in (("nnd",), ("lh",), ("views=16", "lh"), ("views=8", "lh"))]  # fmt: skip
    if len(seeds) > 1:
        # a level's mean over seeds hides a sign that flips from seed to seed
        mine, base = dict(cells(rows, level, ("lh",))), dict(cells(rows, "base", ("lh",)))
        per_seed = []
        for seed in seeds:
            diffs = [mine[p] - base[p] for p in mine if p[1] == seed and p in base]
            if diffs and level != "base":
                per_seed.append(f"seed {seed}: {100 * np.mean(diffs):+.1f}")
        columns.append(", ".join(per_seed) or "-")
    mine = cells(rows, level, ("lh",))
    ran = ", ".join(map(str, sorted({s for (_, s), _ in mine})))
    seconds = np.median([v for _, v in cells(rows, level, ("fit_seconds",))])
    return (f"| {level} | {settings['n_epochs']} | {seconds:.0f} | "
            + " | ".join(columns) + f" | {len(mine)} ({ran}) |")  # fmt: skip


def column(rows, level: str, key: tuple) -> str:
    """Return a level's cell at ``key``: its mean and, but for the base, the difference."""
    mine, base = dict(cells(rows, level, key)), dict(cells(rows, "base", key))
    if not mine:
        return "-"
    mean = 100 * np.mean(list(mine.values()))
    shared = [p for p in mine if p in base]
    if level == "base" or not shared:
        return f"{mean:.1f}"
    diffs = 100 * np.array([mine[p] - base[p] for p in shared])
    se = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else np.nan
    return f"{mean:.1f} ({diffs.mean():+.1f} ± {se:.1f})"


def class_table(rows, plan: dict) -> list:
    """Return the per-class table's lines: lh with 40 views, mean over each level's seeds."""
    classes = sorted({r["class"] for r in rows})
    lines = ["Per class (lh, 40 views, mean over the seeds each level ran on):", "",
             "| level | " + " | ".join(f"{c} {FASHION_MNIST_CLASSES[c]}" for c in classes)
             + " |", "|---" * (len(classes) + 1) + "|"]  # fmt: skip
    for level in plan:
        values = dict(cells(rows, level, ("lh",)))
        if not values:
            continue
        per_class = [[v for (c, _), v in values.items() if c == cls] for cls in classes]
        lines.append(f"| {level} | " + " | ".join(
            f"{100 * np.mean(v):.1f}" if v else "-" for v in per_class) + " |")  # fmt: skip
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_options(parser, "classes", "seeds", classes=(0, 2, 5, 6))
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--budget", type=float, default=180.0,
                        help="seconds of training per class (2 CPU threads)")  # fmt: skip
    parser.add_argument("--costs", default=None, help="cost.py --group frontier JSON")
    add_options(parser, "data", "out", "write-readme")
    parser.add_argument("--readme-only", action="store_true",
                        help="run nothing; write the README block of the results file")  # fmt: skip
    add_options(parser, "dask")
    main(**parse_options(parser))
