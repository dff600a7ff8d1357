"""One-class Fashion-MNIST benchmark: Con2, its baselines, and pixel-space detectors.

The standard protocol: train on the training images of one class, score the whole test
set, AUROC with that class as normal (labels +1 normal, -1 anomaly). For every class and
seed, in one run:

- Con2 with each requested context; the ``nnd`` and ``lh`` scorers share one trained
  encoder (the scorer is fitted on the same training embeddings);
- ``context=None``: SimCLR (``nnd``) and an SSD-like baseline (``lh``), same machinery;
- IsolationForest, OneClassSVM and LocalOutlierFactor(novelty=True) on raw pixels;
- ``check_context`` of every context on the class's training images.

Results go to a JSON file as each (class, seed, configuration) finishes; the same command
run again skips what the file already holds, so a table that needs hours is built across
several runs. A fit in progress saves its training state after every epoch (in
``results/<table>.checkpoints/``, removed once its result is saved), so an interrupted
run loses at most the epoch in progress: the same command resumes the fit. A context
``vflip+invert`` trains with both contexts at once (the paper's multi-context variant).
``--write-readme`` also renders the table into ``benchmarks/README.md`` between markers.

    python benchmarks/oneclass.py --preset cpu --classes 0 1 2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _harness import (
    ALL_CLASSES,
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
    write_json,
)
from _protocol import (  # noqa: F401 - epochs_for and PRESET_COST_ROW: this script's API too
    BASELINES,
    PRESET_COST_ROW,
    PRESET_N_TRAIN,
    PRESETS,
    class_images,
    epochs_for,
    fashion_mnist,
    run_baselines,
    run_con2,
)

from con2 import check_context
from con2.datasets import FASHION_MNIST_CLASSES

CONTEXTS = ("vflip", "invert", "equalize", None)
ROOT = Path(__file__).resolve().parent


def parse_context(text: str):
    """``"None"`` -> None, ``"vflip+invert"`` -> a list of contexts, else the name."""
    if text == "None":
        return None
    return text.split("+") if "+" in text else text


def context_name(context) -> str:
    """Return the key of a context in the results: ``"None"``, ``"vflip+invert"``..."""
    return "+".join(context) if isinstance(context, list | tuple) else str(context)


def parse_n_train(text: str):
    """``"preset"``, ``"all"`` (None) or a number of images."""
    return {"preset": "preset", "all": None}[text] if text in ("preset", "all") else int(text)


def main(
    preset: str = "cpu",
    classes: tuple = ALL_CLASSES,
    seeds: tuple = (0,),
    contexts: tuple = CONTEXTS,
    n_train: int | str | None = "preset",
    data: str | None = None,
    out: str | None = None,
    write_readme: bool = False,
    dask: str | None = None,
    minutes: float | None = None,
    precision: str = "float32",
    epochs_of: str | None = None,
) -> dict:
    """Run what the results file does not hold yet; return (and save) all its results.

    ``dask``: fan the fits out over a Dask cluster (see ``_harness.fan_out``).
    ``minutes``: train each class for that many minutes of 2 CPU threads instead of the
    preset's epochs, priced by ``results/cost-cpu-frontier.json`` (see :func:`epochs_for`).
    ``precision``: of training (float32, as every table before it, unless bfloat16 is
    named: its own results file). ``epochs_of``: price ``minutes`` in the epochs of that
    precision instead (bfloat16 at float32's epochs: equal epochs, not equal time).
    """
    settings = dict(PRESETS[preset])
    if minutes is not None:
        settings["n_epochs"] = epochs_for(preset, minutes, precision=epochs_of or precision)
    if precision != "float32":
        settings["precision"] = precision
    if n_train == "preset":
        n_train = PRESET_N_TRAIN[preset]
    name = f"oneclass-{preset}" + (f"-{minutes:g}min" if minutes is not None else "")
    if precision != "float32":
        name += f"-{precision}" + (f"-{epochs_of}-epochs" if epochs_of else "")
    out_path = Path(out) if out else ROOT / "results" / f"{name}.json"
    results = ResultsFile(out_path, {"preset": preset, "settings": settings, "n_train": n_train})
    units = [(c, s, context_name(x)) for c in classes for s in seeds for x in (*contexts, "pixels")]
    todo = [u for u in units if not is_done(results, u)]
    print(f"{len(units) - len(todo)} of {len(units)} fits already in {out_path}; "
          f"{len(todo)} to run", flush=True)  # fmt: skip
    results.start_run(command_line(
        "oneclass.py", ("--preset", preset), ("--minutes", minutes), ("--classes", classes),
        ("--seeds", seeds), ("--contexts", [context_name(c) for c in contexts]),
        ("--n-train", "all" if n_train is None else n_train), ("--out", out),
        ("--precision", None if precision == "float32" else precision),
        ("--epochs-of", epochs_of),
    ))  # fmt: skip
    add_rows(results, todo, contexts, n_train, data)
    clock = Eta(todo, parallel_fits(dask))
    for (cls, seed, name), result, seconds in run_units(todo, settings, n_train, data, dask,
                                                        results):  # fmt: skip
        results.add((cls, seed), None if name == "pixels" else name, result)
        print(f"class {cls} seed {seed} {summary(name, result)}; {clock.tick(name, seconds)}",
              flush=True)  # fmt: skip
    if epochs_of == "float32" and precision != "float32":
        keep_float32_fits(results, ROOT / "results" / f"oneclass-{preset}-{minutes:g}min.json")
    final = results.finish()
    if write_readme:
        render_readme(final)
    return final


def keep_float32_fits(results: ResultsFile, path: Path) -> None:
    """Copy the AUROCs of the float32 table ``path`` into ``results``, for the comparison.

    The README block of a table trained at float32's epochs shows each fit beside the
    float32 fit of the same class and seed (:func:`precision_comparison`); its results
    file holds them so that the block comes from that file alone. Derived data, not a
    run: the file is rewritten only when they changed.
    """
    if not path.exists():
        return
    rows = [{"class": r["class"], "seed": r["seed"],
             **{c: {s: r[c][s] for s in ("nnd", "lh")} for c in configurations([r])}}
            for r in json.loads(path.read_text())["rows"]]  # fmt: skip
    kept = {"file": path.name, "rows": rows}
    if results.data.get("float32_fits") != kept:
        results.data["float32_fits"] = kept
        write_json(results.path, results.data)


def is_done(results: ResultsFile, unit: tuple) -> bool:
    """Whether a (class, seed, configuration) is in the file ("pixels": every baseline)."""
    cls, seed, name = unit
    return results.has((cls, seed), *(BASELINES if name == "pixels" else (name,)))


def add_rows(results: ResultsFile, todo: list, contexts: tuple, n_train, data) -> None:
    """Start the row of each (class, seed) the run adds to, with its context checks."""
    for cls, seed in dict.fromkeys((c, s) for c, s, _ in todo):
        if results.has((cls, seed)):
            continue
        X_train_all, y_train, _, _ = fashion_mnist(data)
        normal = class_images(X_train_all, y_train, cls, n_train)
        checks = {str(c): vars_of(check_context(normal, c)) for c in contexts
                  if c is not None and not isinstance(c, list | tuple)}  # fmt: skip
        results.add_row((cls, seed), n_train=len(normal), checks=checks)


def run_unit(cls: int, seed: int, name: str, settings: dict, n_train, data,
             checkpoint=None) -> tuple:  # fmt: skip
    """One (class, seed, configuration) of the table: its result and its seconds.

    Runs in this process or on a Dask worker (which reads the data itself).
    ``checkpoint``: the Con2 fit's checkpoint file (see ``run_con2``).
    """
    X_train_all, y_train, X_test, y_test = fashion_mnist(data)
    normal = class_images(X_train_all, y_train, cls, n_train)
    is_normal = np.where(y_test == cls, 1, -1)
    started = time.perf_counter()
    if name == "pixels":
        result = run_baselines(normal, X_test.reshape(len(X_test), -1) / 255.0, is_normal, seed)
    else:
        result = run_con2(
            normal, X_test, is_normal, parse_context(name), settings, seed,
            labels=y_test, checkpoint=checkpoint,
        )  # fmt: skip
    return result, time.perf_counter() - started


def run_units(todo: list, settings: dict, n_train, data, dask: str | None, results):
    """Yield ``(unit, result, seconds)`` for every unit, as each finishes (see ``fan_out``).

    Each Con2 fit checkpoints to its file of ``results`` (the table's ``ResultsFile``).
    """
    calls = [(cls, seed, name, settings, n_train, data,
              None if name == "pixels" else results.checkpoint((cls, seed), name))
             for cls, seed, name in todo]  # fmt: skip
    for i, (result, seconds) in fan_out(run_unit, calls, dask):
        yield todo[i], result, seconds


def vars_of(report) -> dict:
    return {"distinctiveness": report.distinctiveness, "alignment": report.alignment}


def summary(name: str, result: dict) -> str:
    """One line on a finished fit, for the log."""
    if name == "pixels":
        return "baselines: " + ", ".join(f"{k} {result[k]:.3f}" for k in BASELINES)
    return (f"context {name}: nnd {result['nnd']:.3f}, lh {result['lh']:.3f} "
            f"({result['fit_seconds']:.0f} s fit)")  # fmt: skip


def configurations(rows) -> list:
    """Return the Con2 configurations in the rows, in the order they first appear."""
    seen = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, dict) and "nnd" in value:
                seen.setdefault(key, None)
    return list(seen)


def method_name(config: str, scorer: str) -> str:
    if config == "None":
        return "SimCLR nnd" if scorer == "nnd" else "SSD-like lh"
    return f"{config} {scorer}"


def table(results) -> str:
    """Markdown table: one row per class (mean over seeds), one column per method.

    A cell without results shows a dash, and a column with one gets no mean.
    """
    rows = results["rows"]
    methods = [(c, s) for c in configurations(rows) for s in ("nnd", "lh")]
    names = [method_name(c, s) for c, s in methods] + list(BASELINES)
    lines = ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    columns = {name: [] for name in names}
    spreads = {name: [] for name in names}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        per_seed = [[r[c][s] for r in mine if c in r] for c, s in methods]
        per_seed += [[r[b] for r in mine if b in r] for b in BASELINES]
        values = [np.mean(v) if v else np.nan for v in per_seed]
        for name, v in zip(names, per_seed, strict=True):
            spreads[name].append(np.std(v, ddof=1) if len(v) > 1 else np.nan)
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
        best = np.nanmax(values) if not np.all(np.isnan(values)) else np.nan
        cells = ["-" if np.isnan(v) else f"**{100 * v:.1f}**" if v == best else f"{100 * v:.1f}"
                 for v in values]  # fmt: skip
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[cls]} | " + " | ".join(cells) + " |")
    means = [np.mean(columns[name]) for name in names]
    lines.append("| **mean** | " + " | ".join(
        "-" if np.isnan(m) else f"{100 * m:.1f}" for m in means) + " |")  # fmt: skip
    if len({r["seed"] for r in rows}) > 1:
        lines.append(spread_line(rows, [spreads[name] for name in names]))
    return "\n".join(lines)


def spread_line(rows, spreads: list) -> str:
    """Return the table's last line: each column's std over seeds, mean over the classes.

    Classes run on one seed have no spread; the label says so only where there are some.
    """
    classes = {r["class"] for r in rows}
    every_class = all(len({r["seed"] for r in rows if r["class"] == c}) > 1 for c in classes)
    label = "mean over classes" if every_class else "mean over classes with 2+ seeds"
    stds = [np.nanmean(s) if not np.all(np.isnan(s)) else np.nan for s in spreads]
    return f"| std over seeds ({label}) | " + " | ".join(
        "-" if np.isnan(s) else f"{100 * s:.1f}" for s in stds) + " |"  # fmt: skip


def check_table(results) -> str:
    """Markdown table: check_context of every context on each class's training images."""
    rows = results["rows"]
    names = list(rows[0]["checks"])
    if not names:
        return "(no single context to check)"
    header = " | ".join(f"{n} distinct. | {n} align." for n in names)
    lines = [f"| class | {header} |", "|---" * (2 * len(names) + 1) + "|"]
    for cls in sorted({r["class"] for r in rows}):
        checks = next(r for r in rows if r["class"] == cls)["checks"]
        cells = " | ".join(
            f"{checks[n]['distinctiveness']:.3f} | {checks[n]['alignment']:.3f}" for n in names
        )
        lines.append(f"| {cls} {FASHION_MNIST_CLASSES[cls]} | {cells} |")
    return "\n".join(lines)


def readme_text(results) -> str:
    """Return the README block of a table: header, commands, AUROCs, context checks."""
    # A class whose row holds only its context checks has no finished fit yet: left out.
    results = {**results, "rows": [r for r in results["rows"] if configurations([r])]}
    return "\n".join([
        f"{run_header(results)}; preset `{results['preset']}` "
        f"({', '.join(f'{k}={v}' for k, v in results['settings'].items())}); "
        f"seeds {sorted({r['seed'] for r in results['rows']})}; "
        f"{results['rows'][0]['n_train']} training images per class. AUROC in %, mean over "
        "seeds, best per class in bold.",
        "",
        *command_lines(results),
        "",
        table(results),
        *partial_note(results),
        *precision_comparison(results),
        "",
        "`check_context` on each class's training images (distinctiveness: 0.5 = invisible, "
        "1 = always told apart; alignment: rank correlation of distances; a context passes "
        "at 0.75 and 0.7):",
        "",
        check_table(results),
    ])  # fmt: skip


def precision_comparison(results) -> list:
    """Lines comparing a table trained at float32's epochs in another precision with float32.

    Each fit beside the float32 fit of the same class, seed and configuration (the rows
    :func:`keep_float32_fits` copied from the float32 table of the same preset and
    minutes), and each precision's seed-to-seed spread.
    """
    if "float32_fits" not in results:
        return []
    kept = results["float32_fits"]
    other = {(r["class"], r["seed"]): r for r in kept["rows"]}
    precision = results["settings"]["precision"]
    lines = ["", f"Each fit beside the float32 fit of the same class and seed at the same epochs "
             f"(`{kept['file']}`), AUROC in %:", "",
             f"| class | seed | configuration | nnd {precision} | nnd float32 | lh {precision} "
             "| lh float32 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    differences = {"nnd": [], "lh": []}
    for row in results["rows"]:
        mine = other.get((row["class"], row["seed"]), {})
        for name in configurations([row]):
            if name not in mine:
                continue
            cells = []
            for scorer in ("nnd", "lh"):
                a, b = row[name][scorer], mine[name][scorer]
                differences[scorer].append(a - b)
                cells += [f"{100 * a:.1f}", f"{100 * b:.1f}"]
            lines.append(f"| {row['class']} {FASHION_MNIST_CLASSES[row['class']]} | "
                         f"{row['seed']} | {name} | " + " | ".join(cells) + " |")  # fmt: skip
    if not differences["nnd"]:
        return lines

    def spread(rows, scorer):  # largest - smallest over the seeds of a class, mean over classes
        by_class = {}
        for row in rows:
            for name in configurations([row]):
                by_class.setdefault((row["class"], name), []).append(row[name][scorer])
        found = [max(v) - min(v) for v in by_class.values() if len(v) > 1]
        return f"{100 * np.mean(found):.2f}" if found else "not measured"

    lines += ["", f"Difference {precision} - float32, mean (largest in size) over these fits, "
              "against the seed-to-seed spread of each precision (largest - smallest over the "
              "seeds of a class, mean over the classes): " + "; ".join(
                  f"{scorer} {100 * np.mean(d):+.2f} ({100 * max(d, key=abs):+.2f}), spread "
                  f"{precision} {spread(results['rows'], scorer)}, float32 "
                  f"{spread(other.values(), scorer)}" for scorer, d in differences.items())
              + " points."]  # fmt: skip
    return lines


def render_readme(results) -> None:
    """Write the table's block into ``README.md``, under the results file's name."""
    render_block(ROOT / "README.md", results["name"], readme_text(results))


def partial_note(results) -> list:
    """Name the classes a table has not run yet (nothing when it has all ten)."""
    missing = sorted(set(range(len(FASHION_MNIST_CLASSES))) - {r["class"] for r in results["rows"]})
    if not missing:
        return []
    return ["", f"**Partial:** not yet run on classes {', '.join(map(str, missing))}; the means "
            "are over the classes run so far."]  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    add_options(parser, "classes", "seeds")
    parser.add_argument("--contexts", nargs="+", type=parse_context, default=list(CONTEXTS),
                        help="context names, None (no context), a+b (both at once)")  # fmt: skip
    parser.add_argument(
        "--n-train", default="preset", type=parse_n_train,
        help="training images per class (a random subset); 'preset' or 'all'",
    )  # fmt: skip
    add_options(parser, "data", "out", "write-readme")
    parser.add_argument("--minutes", type=float, default=None,
                        help="minutes of 2-thread training per class instead of the preset's "
                        "epochs (priced by results/cost-cpu-frontier.json)")  # fmt: skip
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="of training (its own results file when not float32)",
    )
    parser.add_argument(
        "--epochs-of",
        choices=["float32", "bfloat16"],
        default=None,
        help="price --minutes in this precision's epochs (equal epochs)",
    )
    add_options(parser, "dask")
    main(**parse_options(parser))
