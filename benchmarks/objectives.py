"""Training objectives at equal CPU time: Con2, SimCLR, CSI and FIRM on one-class Fashion-MNIST.

The standard protocol (all 6000 training images of a class, all 10000 test images, no
pretrained weights, no other data) and one setting for every class: the ``cpu-frontier``
preset (ResNet18 of width 8, batches of 64, 16 test-time views), trained for ``--minutes``
of 2 CPU threads per class. An epoch of each objective costs what ``cost.py --group
objectives`` measured side by side (CSI and FIRM see 8 views of an image, Con2 4 and
SimCLR 2), so each objective gets the epochs that time buys: Con2 the epochs the
``cpu-frontier`` tables price for those minutes, the others that times the ratio of
Con2's cost to theirs.

Each fit is scored by ``nnd`` and ``lh`` on one set of embeddings (as ``oneclass.py``)
and by the objective's own score where it has one (``own``: CSI's score, FIRM's mean
cosine to the 5 nearest training images); Con2 trains with the ``vflip`` context, the
others without one. Results go to ``results/objectives-cpu-<minutes>min.json`` as each
fit finishes; the same command continues an interrupted table, and an interrupted fit
from its last complete epoch (checkpoints, as in ``oneclass.py``). ``--con2-from`` copies
Con2's fits from a ``oneclass.py`` table of the very same setting instead of training
them again. ``--objectives con2-outliers`` adds Con2 with rotations by 90 and 270 degrees
as synthetic outliers (``Con2Objective(outliers=["rot90", "rot270"])``, priced by ``cost.py
--group objectives-outliers``) to the table of the same minutes.

    python benchmarks/objectives.py --minutes 6 --classes 0 1 2 3 4 5 6 7 8 9 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
from _harness import (
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
from _protocol import PRESETS, RESULTS, class_images, epochs_for, fashion_mnist, run_con2

from con2 import Con2Objective, NearestNeighborScorer
from con2.datasets import FASHION_MNIST_CLASSES

ROOT = Path(__file__).resolve().parent
# context, and the objective's own scorer (None: nnd is its score)
OBJECTIVES = {
    "con2": ("vflip", None),
    "simclr": (None, None),
    "csi": (None, "csi"),
    "firm": (None, "nnd5"),
    "con2-outliers": ("vflip", None),
}
# The objectives from the literature, run by default; "con2-outliers" (Con2 with FIRM's
# rotations by 90 and 270 degrees as synthetic outliers) is asked for by name.
LITERATURE = ("con2", "simclr", "csi", "firm")
OWN_SCORERS = {"csi": lambda: "csi", "nnd5": lambda: NearestNeighborScorer(n_neighbors=5)}
# Per-class AUROC (%) reported by the authors of two rotation-based methods trained from
# scratch, second-hand (benchmarks/README.md, "Literature"): GEOM (Golan & El-Yaniv,
# 2018) and ARNet (Ye et al., 2022), as Table 1 of AGAD quotes them.
REPORTED = {
    "GEOM": (99.4, 97.6, 91.1, 89.9, 92.1, 93.4, 83.3, 98.9, 90.8, 99.2),
    "ARNet": (92.7, 99.3, 89.1, 93.6, 90.8, 93.1, 85.0, 98.4, 97.8, 98.4),
}
# The detector's ``objective`` for a name that is not a built-in objective's
OBJECTIVE_PARAMS = {"con2-outliers": lambda: Con2Objective(outliers=["rot90", "rot270"])}
# The cost.py group that measured an objective side by side with Con2, by objective
COST_GROUPS = {"con2-outliers": "objectives-outliers"}
SCORERS = ("nnd", "lh", "own")


def epochs_of(objective: str, minutes: float, precision: str = "float32",
              costs: Path | None = None) -> int:  # fmt: skip
    """Epochs of ``objective`` that ``minutes`` per class buy (see the module docstring).

    The objectives' costs relative to Con2's come from ``cost.py --group objectives``, or
    ``--group objectives-bfloat16`` for a ``precision`` of bfloat16.
    """
    suffix = "" if precision == "float32" else f"-{precision}"
    costs = costs or RESULTS / f"cost-cpu-{COST_GROUPS.get(objective, 'objectives')}{suffix}.json"
    rows = json.loads(costs.read_text())["rows"]
    con2 = epochs_for("cpu-frontier", minutes, costs.parent / "cost-cpu-frontier.json", precision)
    ratio = rows["con2"]["seconds_per_epoch_6000"] / rows[objective]["seconds_per_epoch_6000"]
    return max(1, round(con2 * ratio))


def run_unit(cls: int, seed: int, objective: str, settings: dict, data,
             checkpoint=None) -> tuple:  # fmt: skip
    """One (class, seed, objective): its result and its seconds (here or on a Dask worker).

    ``checkpoint``: the fit's checkpoint file (see ``run_con2``).
    """
    X_train_all, y_train, X_test, y_test = fashion_mnist(data)
    normal = class_images(X_train_all, y_train, cls)
    is_normal = np.where(y_test == cls, 1, -1)
    context, own = OBJECTIVES[objective]
    started = time.perf_counter()
    param = OBJECTIVE_PARAMS.get(objective, lambda: objective)()
    result = run_con2(normal, X_test, is_normal, context, {**settings, "objective": param},
                      seed, labels=y_test, own_scorer=own and OWN_SCORERS[own](),
                      checkpoint=checkpoint)  # fmt: skip
    return result, time.perf_counter() - started


def main(minutes: float = 6.0, classes: tuple = tuple(range(10)), seeds: tuple = (0,),
         objectives: tuple = LITERATURE, precision: str = "float32",
         data: str | None = None, out: str | None = None, write_readme: bool = False,
         dask: str | None = None, con2_from: str | None = None) -> dict:  # fmt: skip
    """Run what the results file does not hold yet; return (and save) all of it.

    ``con2_from``: a ``oneclass.py`` results file of the same setting (its ``vflip``
    fits; a bare name is looked up in ``results/``): Con2's fits are copied from it
    instead of trained again, each marked with the file's name. Its settings and training
    images must be this table's Con2 setting, or nothing is copied (an error says why);
    the same fit on the same machine and thread count gives the same AUROCs, bit for bit,
    so only the time is saved.
    """
    base = {**PRESETS["cpu-frontier"],
            **({"precision": precision} if precision != "float32" else {})}  # fmt: skip
    epochs = {name: epochs_of(name, minutes, precision) for name in objectives}
    name = f"objectives-cpu-{minutes:g}min" + ("" if precision == "float32" else f"-{precision}")
    path = Path(out) if out else RESULTS / f"{name}.json"
    results = ResultsFile(path, {"settings": base, "minutes": minutes})
    units = [(c, s, o) for c in classes for s in seeds for o in objectives]
    todo = [(c, s, o) for c, s, o in units if not results.has((c, s), o)]
    results.start_run(command_line(
        "objectives.py", ("--minutes", float(minutes)), ("--classes", classes),
        ("--seeds", seeds), ("--objectives", objectives),
        ("--precision", None if precision == "float32" else precision), ("--out", out),
        ("--con2-from", con2_from),
    ))  # fmt: skip
    if con2_from and "con2" in objectives:
        source = Path(con2_from) if Path(con2_from).exists() else RESULTS / con2_from
        todo = copy_con2_fits(results, todo, source, {**base, "n_epochs": epochs["con2"]})
    print(f"{len(units) - len(todo)} of {len(units)} fits already in {path}; {len(todo)} to run;"
          f" epochs {epochs}", flush=True)  # fmt: skip
    calls = [(c, s, o, {**base, "n_epochs": epochs[o]}, data, results.checkpoint((c, s), o))
             for c, s, o in todo]  # fmt: skip
    started, n_parallel = time.perf_counter(), parallel_fits(dask)
    for i, (result, seconds) in fan_out(run_unit, calls, dask):
        cls, seed, objective = todo[i]
        results.add((cls, seed), objective, {**result, "n_epochs": epochs[objective]})
        left = (time.perf_counter() - started) / (i + 1) * (len(todo) - i - 1) / n_parallel
        print(f"class {cls} seed {seed} {objective}: nnd {result['nnd']:.3f}, lh "
              f"{result['lh']:.3f}, own {result.get('own', result['nnd']):.3f} "
              f"({seconds:.0f} s); about {left / 60:.0f} min left", flush=True)  # fmt: skip
    final = results.finish()
    if write_readme:
        render_block(ROOT / "README.md", final["name"], readme_text(final))
    return final


def copy_con2_fits(results: ResultsFile, todo: list, path: Path, settings: dict) -> list:
    """Record the Con2 fits of ``todo`` that the oneclass table ``path`` holds; the rest."""
    table = json.loads(path.read_text())
    if table["settings"] != settings or table["n_train"] is not None:
        raise ValueError(f"{path.name} trained {table['settings']} on n_train="
                         f"{table['n_train']}; Con2 here is {settings} on all images")  # fmt: skip
    found = {(r["class"], r["seed"]): r["vflip"] for r in table["rows"] if "vflip" in r}
    left = []
    for cls, seed, objective in todo:
        if objective == "con2" and (cls, seed) in found:
            results.add((cls, seed), "con2", {**found[cls, seed], "n_epochs": settings["n_epochs"],
                                              "copied_from": path.name})  # fmt: skip
        else:
            left.append((cls, seed, objective))
    return left


def scores(row: dict, objective: str) -> dict:
    """AUROC of each scorer of one fit; ``own`` is ``nnd`` where nnd is the objective's."""
    found = row[objective]
    return {"nnd": found["nnd"], "lh": found["lh"], "own": found.get("own", found["nnd"])}


def best_scorers(rows: list, objectives: list) -> dict:
    """Each objective's scorer of the best mean over the classes it ran on."""
    best = {}
    for objective in objectives:
        mine = [scores(r, objective) for r in rows if objective in r]
        best[objective] = max(SCORERS, key=lambda s: np.mean([m[s] for m in mine]))
    return best


def per_class(rows: list, objective: str, scorer: str) -> dict:
    """Mean over seeds of one scorer's AUROC, by class."""
    found = {}
    for row in rows:
        if objective in row:
            found.setdefault(row["class"], []).append(scores(row, objective)[scorer])
    return {cls: float(np.mean(values)) for cls, values in found.items()}


def tabled(rows: list, objectives: list) -> tuple[list, dict]:
    """Return the fits the table averages, and each objective's seeds left out of it.

    An objective's classes are those of its lowest seed; another seed enters its cells
    only once it has all of them, so that no cell averages more seeds than its neighbours
    while a second seed is under way. Returns rows holding only the kept fits, and, by
    objective, ``{seed: classes run so far}`` for each seed left out.
    """
    kept, left_out = set(), {}
    for objective in objectives:
        ran = {(r["class"], r["seed"]) for r in rows if objective in r}
        first = min(seed for _, seed in ran)
        classes = {cls for cls, seed in ran if seed == first}
        for seed in sorted({seed for _, seed in ran}):
            done = {cls for cls, s in ran if s == seed}
            if classes <= done:
                kept |= {(cls, seed, objective) for cls in classes}
            else:
                left_out.setdefault(objective, {})[seed] = sorted(done)
    table = [{"class": r["class"], "seed": r["seed"],
              **{o: r[o] for o in objectives if (r["class"], r["seed"], o) in kept}}
             for r in rows]  # fmt: skip
    return [r for r in table if len(r) > 2], left_out


def readme_text(results) -> str:
    """Return the README block: per class, each objective with its best scorer."""
    objectives = [o for o in OBJECTIVES if any(o in r for r in results["rows"])]
    rows, left_out = tabled(results["rows"], objectives)
    best = best_scorers(rows, objectives)
    table = {o: per_class(rows, o, best[o]) for o in objectives}
    classes = sorted({r["class"] for r in rows})
    epochs = {o: next(r[o]["n_epochs"] for r in rows if o in r) for o in objectives}
    lines = [
        f"{run_header(results)}; preset `cpu-frontier` "
        f"({', '.join(f'{k}={v}' for k, v in results['settings'].items() if k != 'n_epochs')})"
        f", the epochs {results['minutes']:g} minutes of 2-thread training buy per class "
        f"and objective (epochs: {', '.join(f'{o} {e}' for o, e in epochs.items())}"
        f"{threads_text(rows, objectives)}); {seeds_text(rows, objectives)}. AUROC in %, "
        "mean over seeds; each objective "
        "with its best scorer over the classes (own: CSI's score, FIRM's 5 nearest).",
        "",
        *command_lines(results),
        "",
        "| class | " + " | ".join(f"{o} ({best[o]})" for o in objectives) + " |",
        "|---" * (len(objectives) + 1) + "|",
    ]  # fmt: skip
    lines[-2] += "".join(f" {name}, reported |" for name in REPORTED)
    lines[-1] += "---|" * len(REPORTED)
    for cls in classes:
        values = ["-" if v is None else f"{100 * v:.1f}"
                  for v in (table[o].get(cls) for o in objectives)]  # fmt: skip
        shown = [float(v) for v in values if v != "-"]
        # the best in bold (every one shown as the best), where more than one ran
        cells = [f"**{v}**" if len(shown) > 1 and v != "-" and float(v) == max(shown) else v
                 for v in values]  # fmt: skip
        cells += [f"{figures[cls]:.1f}" for figures in REPORTED.values()]
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[cls]} | " + " | ".join(cells) + " |")
    # Each mean row is over the same classes for every objective in it: all ten for the
    # objectives that ran on all ten, and those every objective ran on, if fewer.
    every = list(range(len(FASHION_MNIST_CLASSES)))
    common = [c for c in classes if all(c in table[o] for o in objectives)]
    spans = [every] if any(set(every) <= set(table[o]) for o in objectives) else []
    spans += [common] if common and common != every else []
    for over in spans:
        cells = [f"{100 * np.mean([table[o][c] for c in over]):.1f}"
                 if set(over) <= set(table[o]) else "-" for o in objectives]  # fmt: skip
        cells += [f"{np.mean([figures[c] for c in over]):.1f}" for figures in REPORTED.values()]
        label = "**mean**" if over is every else (
            f"**mean of classes {', '.join(map(str, over))}**")  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Ours: every objective's column, trained and scored here. Reported: the "
              "authors' per-class figures as a later paper's table quotes them (not read in "
              "their own papers; see [Literature](#literature-not-run-here)), after their "
              "own training (not our budget). CSI and FIRM report no Fashion-MNIST figures "
              "we could read."]  # fmt: skip
    copied = copied_text(rows)
    if copied:
        lines += ["", copied]
    missing = [f"{o} seed {seed} on class{'es' * (len(classes) > 1)} {', '.join(map(str, classes))}"
               for (o, seed), classes in not_run(results, objectives).items()]  # fmt: skip
    if missing:
        lines += ["", f"**Partial:** not run yet: {'; '.join(missing)}."]
    if left_out:
        so_far = [f"{o} seed {seed} (classes {', '.join(map(str, done))})"
                  for o, seeds in left_out.items() for seed, done in seeds.items()]  # fmt: skip
        lines[-1] += (
            " A seed enters an objective's column once it has all the classes of "
            f"the objective's first seed; left out so far: {'; '.join(so_far)}."
        )
    shirts = shirts_text(results["rows"], objectives, best)
    spread = spread_text(rows, objectives, best)
    return "\n".join(lines + (["", *shirts] if shirts else []) + (["", spread] if spread else []))


def copied_text(rows: list) -> str:
    """Say which of Con2's fits ``--con2-from`` copied (empty where it copied none)."""
    copied, trained = {}, False
    for row in rows:
        if "con2" in row:
            source = row["con2"].get("copied_from")
            trained |= source is None
            if source:
                copied.setdefault(source, {}).setdefault(row["seed"], []).append(row["class"])
    if not copied:
        return ""
    if not trained:
        return (f"Con2's fits are those of `{'`, `'.join(sorted(copied))}` (the same setting, "
                "trained once, copied by `--con2-from`).")  # fmt: skip
    parts = []
    for source, by_seed in sorted(copied.items()):
        fits = []
        for seed, classes in sorted(by_seed.items()):
            every = sorted(classes) == sorted(r["class"] for r in rows
                                              if "con2" in r and r["seed"] == seed)  # fmt: skip
            named = f"class{'es' * (len(classes) > 1)} {', '.join(map(str, sorted(classes)))}"
            fits.append(f"seed {seed} on {'every class' if every else named}")
        parts.append(f"from `{source}`, {' and '.join(fits)}")
    return ("Con2's fits copied by `--con2-from` (the same setting, trained once) "
            f"{'; '.join(parts)}; its other fits were trained here.")  # fmt: skip


def spread_text(rows: list, objectives: list, best: dict) -> str:
    """Return each objective's mean by seed and its difference from Con2, fit by fit.

    Fits are paired with Con2's of the same class and seed (mean difference and its
    standard error), each objective with its best scorer. Empty where no objective has
    two seeds and none can be paired with Con2.
    """
    by_seed, pairs = [], []
    for o in objectives:
        seeds = sorted({r["seed"] for r in rows if o in r})
        if len(seeds) > 1:
            means = [100 * np.mean([scores(r, o)[best[o]] for r in rows if o in r
                                    and r["seed"] == seed]) for seed in seeds]  # fmt: skip
            by_seed.append(f"{o} " + ", ".join(f"{m:.1f}" for m in means))
        found = [100 * (scores(r, o)[best[o]] - scores(r, "con2")[best["con2"]])
                 for r in rows if o != "con2" and o in r and "con2" in r]  # fmt: skip
        if len(found) > 1:
            error = np.std(found, ddof=1) / np.sqrt(len(found))
            pairs.append(f"{o} {np.mean(found):+.1f} ± {error:.1f} ({len(found)} pairs)")
    text = []
    if by_seed:
        text.append(f"Means over the classes, seed by seed: {'; '.join(by_seed)}.")
    if pairs:
        text.append("Fit by fit against Con2 on the same class and seed (mean difference ± "
                    f"its standard error, in points): {'; '.join(pairs)}.")  # fmt: skip
    return " ".join(text)


def not_run(results, objectives: list) -> dict:
    """Classes of the ten not run yet, by (objective, seed) that ran or that a command asked for."""
    asked = {(o, r["seed"]) for r in results["rows"] for o in objectives if o in r}
    for command in results.get("commands") or [results["command"]]:
        options = parse_options(make_parser(), shlex.split(command)[2:])
        asked |= {(o, seed) for o in options["objectives"] for seed in options["seeds"]}
    found = {(o, r["seed"], r["class"]) for r in results["rows"] for o in objectives if o in r}
    order = sorted(asked, key=lambda key: (list(OBJECTIVES).index(key[0]), key[1]))
    missing = {(o, seed): [c for c in range(10) if (o, seed, c) not in found] for o, seed in order}
    return {key: classes for key, classes in missing.items() if classes}


def seeds_text(rows: list, objectives: list) -> str:
    """Name the seeds of the table: one list, or each objective's where they differ."""
    seeds = {o: sorted({r["seed"] for r in rows if o in r}) for o in objectives}
    if len({tuple(s) for s in seeds.values()}) == 1:
        return f"seeds {next(iter(seeds.values()))}"
    return "seeds " + ", ".join(f"{o} {s}" for o, s in seeds.items())


def threads_text(rows: list, objectives: list) -> str:
    """Say how many threads the fits trained here ran on, where their rows record it."""
    threads = sorted({r[o]["threads"] for r in rows for o in objectives
                      if o in r and "threads" in r[o]})  # fmt: skip
    if not threads:
        return ""
    counts = " or ".join(map(str, threads))
    return f"; the fits trained here ran on {counts} thread{'s' if threads != [1] else ''} each"


def shirts_text(rows: list, objectives: list, best: dict) -> list:
    """AUROC of shirts (normal) against each anomaly class, per fit: what moved shirts.

    Every fit that recorded it, each row naming its seed (Con2's seed-0 fits were copied
    from a table made before ``per_anomaly`` was recorded).
    """
    lines = []
    for objective in objectives:
        recorded = [r for r in rows if r["class"] == 6 and "per_anomaly" in r.get(objective, {})]
        for fit in sorted(recorded, key=lambda r: r["seed"]):
            scorer = best[objective]
            per_anomaly = fit[objective]["per_anomaly"]
            # "own" is nnd where nnd is the objective's own score
            found = per_anomaly[scorer if scorer in per_anomaly else "nnd"]
            lines.append(f"| {objective} ({scorer}) | {fit['seed']} | "
                         + " | ".join(f"{100 * found[str(k)]:.1f}" for k in range(10) if k != 6)
                         + " |")  # fmt: skip
    if not lines:
        return []
    return ["Shirts (class 6) as normal, against each anomaly class alone:", "",
            "| objective | seed | " + " | ".join(FASHION_MNIST_CLASSES[k] for k in range(10)
                                                  if k != 6) + " |",
            "|---" * 11 + "|", *lines]  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    """Return the command line's parser (also reads back the commands a table records)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    add_options(parser, "classes", "seeds")
    parser.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES),
                        default=list(LITERATURE))  # fmt: skip
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--con2-from",
        default=None,
        metavar="JSON",
        help="copy Con2's fits from this oneclass.py table of the same setting",
    )
    return add_options(parser, "data", "out", "write-readme", "dask")


if __name__ == "__main__":
    main(**parse_options(make_parser()))
