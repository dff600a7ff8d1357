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
several runs (an interrupted run loses at most the fit in progress). A context
``vflip+invert`` trains with both contexts at once (the paper's multi-context variant).
``--write-readme`` also renders the table into ``benchmarks/README.md`` between markers.

    python benchmarks/oneclass.py --preset cpu --classes 0 1 2 --seeds 0
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
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

from con2 import Con2Detector, GaussianScorer, NearestNeighborScorer, check_context
from con2.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

PRESETS = {
    # The whole table (10 classes x 4 trainings x 2 seeds) in 41 minutes on 2 CPU
    # cores: width 8, 5 epochs of batch 128 on 2000 of the 6000 training images, 8 views.
    "cpu": dict(base_width=8, n_epochs=5, batch_size=128, n_test_augmentations=8),
    # All 6000 training images, width 8, 8 epochs of batch 256, 8 views: about 2 minutes
    # of training per class on 2 CPU cores.
    "cpu-6000": dict(base_width=8, n_epochs=8, batch_size=256, n_test_augmentations=8),
    # Chosen by the factor study (frontier.py, README "Where a CPU budget is best spent"):
    # at equal compute, batches of 64 beat 128 and 256 on every class studied, width 16
    # and a second context did not pay, and 16 test-time views score within 0.6 points
    # of 40. 65 epochs of batch 64 are 20 minutes of training per class on 2 CPU threads
    # (epochs_for("cpu-frontier", 20), priced by results/cost-cpu-frontier.json).
    "cpu-frontier": dict(base_width=8, n_epochs=65, batch_size=64, n_test_augmentations=16),
    # The paper's budget [appendix E]: ResNet18, 2048 epochs, batch 512, A = 40.
    "gpu": dict(base_width=64, n_epochs=2048, batch_size=512, n_test_augmentations=40),
}
PRESET_N_TRAIN = {"cpu": 2000, "cpu-6000": None, "cpu-frontier": None, "gpu": None}
# The row of results/cost-cpu-frontier.json that prices one epoch of a preset, for
# --minutes (a training budget per class on 2 CPU threads instead of a number of epochs).
PRESET_COST_ROW = {"cpu-6000": "w8", "cpu-frontier": "w8 b64"}
CONTEXTS = ("vflip", "invert", "equalize", None)
BASELINES = {
    "IsolationForest": lambda seed: IsolationForest(random_state=seed),
    "OneClassSVM": lambda seed: OneClassSVM(gamma="scale", nu=0.1),
    "LOF": lambda seed: LocalOutlierFactor(novelty=True),
}
ROOT = Path(__file__).resolve().parent


def parse_context(text: str):
    """``"None"`` -> None, ``"vflip+invert"`` -> a list of contexts, else the name."""
    if text == "None":
        return None
    return text.split("+") if "+" in text else text


def context_name(context) -> str:
    """Return the key of a context in the results: ``"None"``, ``"vflip+invert"``..."""
    return "+".join(context) if isinstance(context, list | tuple) else str(context)


def run_con2(X_train, X_test, is_normal, context, settings, seed, view_counts=(), labels=None):
    """Fit Con2 once and return AUROCs of both scorers and the fit time.

    Both scorers see the same encoder and the same test-time views: the fitted ``nnd``
    scorer as ``score_samples`` uses it (training images recognised and left out), and a
    Gaussian scorer fitted on the same training embeddings. One embedding pass of the
    test set serves both (``embed(views="all")``, then the scorers themselves).

    ``settings`` may hold ``image_size``: both image sets are then resized to it first
    (bilinear, antialiased). Each count in ``view_counts`` below the fit's
    ``n_test_augmentations`` is also scored, with that many of the fitted views (the
    first of each context), under the key ``f"views={count}"``. With the test images'
    class ``labels``, ``per_anomaly`` holds each scorer's AUROC of the normal test images
    against each anomaly class alone (which anomalies a fit misses).
    """
    settings = dict(settings)
    size = settings.pop("image_size", None)
    if size is not None:
        X_train, X_test = resize(X_train, size), resize(X_test, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # context warnings: check_context below
        start = time.perf_counter()
        det = Con2Detector(context=context, scorer="nnd", random_state=seed, **settings)
        det.fit(X_train)
        fit_seconds = time.perf_counter() - start
    z_train, z_test = (torch.from_numpy(det.embed(X, views="all")) for X in (X_train, X_test))
    exclude = torch.from_numpy(det.find_training_images(X_test))

    def aurocs(views, calibration=False):
        nnd = NearestNeighborScorer().fit(z_train[views])
        lh = GaussianScorer().fit(z_train[views])
        tests = {"nnd": nnd.score_samples(z_test[views], exclude).cpu().numpy(),
                 "lh": lh.score_samples(z_test[views], exclude).cpu().numpy()}  # fmt: skip
        found = {name: roc_auc_score(is_normal, scores) for name, scores in tests.items()}
        if calibration and labels is not None:
            found["per_anomaly"] = {name: per_anomaly(is_normal, labels, scores)
                                    for name, scores in tests.items()}  # fmt: skip
        if calibration:
            everyone = torch.arange(z_train.shape[1])
            found["fpr"] = false_positive_rates(is_normal, tests, {
                "nnd leave-one-out": ("nnd", nnd.score_samples(z_train[views], everyone)),
                "lh in-sample": ("lh", lh.score_samples(z_train[views])),
                "lh leave-one-out": ("lh", lh.score_samples(z_train[views], everyone)),
            })  # fmt: skip
        return found

    steps = det.n_epochs * (len(X_train) // min(det.batch_size, len(X_train)))
    result = {**aurocs(slice(None), calibration=True), "fit_seconds": fit_seconds,
              "n_steps": steps}  # fmt: skip
    for count in view_counts:
        if count < len(det.views_):
            result[f"views={count}"] = aurocs(balanced_views(det.views_.view_contexts, count))
    return result


def per_anomaly(is_normal, labels, scores) -> dict:
    """AUROC of the normal images against each anomaly class alone, keyed by class."""
    normal = scores[is_normal == 1]
    return {str(k): roc_auc_score(np.r_[np.ones(len(normal)), -np.ones(np.sum(labels == k))],
                                  np.r_[normal, scores[labels == k]])
            for k in np.unique(labels[is_normal != 1])}  # fmt: skip


NOMINAL_RATES = (0.01, 0.05, 0.1)


def false_positive_rates(is_normal, test_scores: dict, rules: dict) -> dict:
    """Share of the normal test images each threshold rule flags, at each nominal rate.

    A rule is (scorer, training scores); its threshold at rate c is the c-quantile of its
    training scores, as ``contamination=c`` sets ``offset_``.
    """
    rates = {}
    for rule, (scorer, train_scores) in rules.items():
        train_scores = train_scores.cpu().numpy()
        normal = test_scores[scorer][is_normal == 1]
        rates[rule] = {str(c): float(np.mean(normal < np.percentile(train_scores, 100 * c)))
                       for c in NOMINAL_RATES}  # fmt: skip
    return rates


def balanced_views(view_contexts, count: int):
    """Return ``count`` view indices, the first views of each context in equal shares."""
    n_contexts = int(view_contexts.max()) + 1
    per_context = count // n_contexts
    return torch.cat([torch.nonzero(view_contexts == k)[:per_context, 0]
                      for k in range(n_contexts)])  # fmt: skip


def resize(X: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images (n, H, W) to floats in [0, 1] of shape (n, size, size)."""
    x = torch.from_numpy(X).float().div_(255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)  # fmt: skip
    return x.clamp_(0.0, 1.0)[:, 0].numpy()


def main(
    preset: str = "cpu",
    classes: tuple = tuple(range(10)),
    seeds: tuple = (0,),
    contexts: tuple = CONTEXTS,
    n_train: int | str | None = "preset",
    data: str | None = None,
    out: str | None = None,
    write_readme: bool = False,
    dask: str | None = None,
    minutes: float | None = None,
) -> dict:
    """Run what the results file does not hold yet; return (and save) all its results.

    ``dask``: fan the fits out over a Dask cluster (see :func:`run_units`). ``minutes``:
    train each class for that many minutes of 2 CPU threads instead of the preset's
    epochs, priced by ``results/cost-cpu-frontier.json`` (see :func:`epochs_for`).
    """
    settings = dict(PRESETS[preset])
    if minutes is not None:
        settings["n_epochs"] = epochs_for(preset, minutes)
    if n_train == "preset":
        n_train = PRESET_N_TRAIN[preset]
    name = f"oneclass-{preset}" + (f"-{minutes:g}min" if minutes is not None else "")
    out_path = Path(out) if out else ROOT / "results" / f"{name}.json"
    command = command_line(preset, classes, seeds, contexts, n_train, out, minutes)
    results = ResultsFile(out_path, {"preset": preset, "settings": settings, "n_train": n_train})
    units = [(c, s, context_name(x)) for c in classes for s in seeds for x in (*contexts, "pixels")]
    todo = [u for u in units if not results.has(*u)]
    print(f"{len(units) - len(todo)} of {len(units)} fits already in {out_path}; "
          f"{len(todo)} to run", flush=True)  # fmt: skip
    results.start_run(command)
    X_train_all, y_train, _, _ = fashion_mnist(data)
    for cls, seed in dict.fromkeys((c, s) for c, s, _ in todo):
        if not results.has_row(cls, seed):
            normal = class_images(X_train_all, y_train, cls, n_train)
            checks = {str(c): vars_of(check_context(normal, c)) for c in contexts
                      if c is not None and not isinstance(c, list | tuple)}  # fmt: skip
            results.add_row(cls, seed, n_train=len(normal), checks=checks)
    clock = Eta(todo, parallel_fits(dask))
    for (cls, seed, name), result, seconds in run_units(todo, settings, n_train, data, dask):
        results.add(cls, seed, name, result)
        if name == "pixels":
            summary = "baselines: " + ", ".join(f"{k} {result[k]:.3f}" for k in BASELINES)
        else:
            summary = f"context {name}: {fmt(result)}"
        print(f"class {cls} seed {seed} {summary}; {clock.tick(name, seconds)}", flush=True)
    final = results.finish()
    if write_readme:
        render_readme(final)
    return final


@functools.lru_cache(maxsize=2)
def fashion_mnist(data):
    """Read the Fashion-MNIST arrays, once per process."""
    return load_fashion_mnist(data)


def class_images(X_train_all, y_train, cls: int, n_train):
    """Return the training images of a class (a fixed random subset of ``n_train``, if given)."""
    normal = X_train_all[y_train == cls]
    if n_train is not None:
        normal = normal[np.random.default_rng(0).permutation(len(normal))[:n_train]]
    return normal


def run_unit(cls: int, seed: int, name: str, settings: dict, n_train, data) -> tuple:
    """One (class, seed, configuration) of the table: its result and its seconds.

    Runs in this process or on a Dask worker (which reads the data itself).
    """
    X_train_all, y_train, X_test, y_test = fashion_mnist(data)
    normal = class_images(X_train_all, y_train, cls, n_train)
    is_normal = np.where(y_test == cls, 1, -1)
    started = time.perf_counter()
    if name == "pixels":
        result = run_baselines(normal, X_test.reshape(len(X_test), -1) / 255.0, is_normal, seed)
    else:
        result = run_con2(
            normal, X_test, is_normal, parse_context(name), settings, seed, labels=y_test
        )
    return result, time.perf_counter() - started


def run_units(todo: list, settings: dict, n_train, data, dask: str | None):
    """Yield ``(unit, result, seconds)`` for every unit, as each finishes (see :func:`fan_out`)."""
    import oneclass  # by reference, not as __main__, so that Dask workers can import it

    calls = [(*unit, settings, n_train, data) for unit in todo]
    for i, (result, seconds) in fan_out(oneclass.run_unit, calls, dask):
        yield todo[i], result, seconds


def fan_out(function, calls: list, dask: str | None):
    """Yield ``(i, function(*calls[i]))`` for every call, in the order they finish.

    Here one after the other, or fanned out over a Dask cluster (``dask``: a scheduler
    address, or ``"local"`` for a local cluster of one single-threaded worker process per
    CPU, so that workers times threads never exceeds the cores; Dask's nanny starts
    workers with ``OMP_NUM_THREADS=1``, which torch follows). ``function`` must live in a
    module of this folder (it is uploaded to the workers with this one). The caller
    records each result as it arrives, so an interrupted run keeps everything finished.
    """
    if dask is None:
        for i, call in enumerate(calls):
            yield i, function(*call)
        return
    from distributed import Client, LocalCluster, as_completed

    environ = dict(os.environ)
    cluster = (LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1,
                            dashboard_address=None) if dask == "local" else None)  # fmt: skip
    # Dask's nanny sets OMP_NUM_THREADS=1 (and more) in *this* process's environment
    # before spawning a worker and never restores it; undo that so that processes this
    # one starts later get the caller's thread settings.
    os.environ.clear()
    os.environ.update(environ)
    modules = dict.fromkeys([__name__ if __name__ != "__main__" else "oneclass",
                             function.__module__])  # fmt: skip
    try:
        with Client(cluster or dask) as client:
            for name in modules:  # saved where the workers import from, not imported here
                client.upload_file(str(Path(__file__).with_name(f"{name}.py")), load=False)
            futures = {client.submit(function, *call, pure=False): i
                       for i, call in enumerate(calls)}  # fmt: skip
            for future in as_completed(futures):
                yield futures[future], future.result()
    finally:
        if cluster is not None:
            cluster.close()


def run_baselines(normal, pixels_test, is_normal, seed) -> dict:
    """AUROC of each pixel-space baseline fitted on the normal images."""
    pixels = normal.reshape(len(normal), -1) / 255.0
    return {
        name: roc_auc_score(is_normal, make(seed).fit(pixels).score_samples(pixels_test))
        for name, make in BASELINES.items()
    }


class ResultsFile:
    """A results JSON file that grows by one (class, seed, configuration) at a time.

    ``identity`` (preset, settings, number of training images) names the table; a file
    with another identity is refused rather than mixed in. Every :meth:`add` rewrites
    the file atomically (a temporary file, then a rename), so an interruption loses at
    most the fit in progress. Rows keep today's schema: one per (class, seed), with one
    key per configuration ("vflip", "None", ...) and the pixel baselines' AUROCs at top
    level.
    """

    def __init__(self, path: Path, identity: dict):
        self.path = Path(path)
        self.data = {**identity, "rows": [], "commands": [], "wall_seconds": 0.0}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            theirs = {k: data.get(k) for k in identity}
            if json.loads(json.dumps(identity)) != theirs:
                raise ValueError(
                    f"{self.path} holds another table ({theirs}), not {identity}; pass "
                    "another --out, or remove the file to start afresh."
                )
            data.setdefault("commands", [data["command"]] if "command" in data else [])
            self.data = data
        self.rows = {(r["class"], r["seed"]): r for r in self.data["rows"]}
        self.run_started = None

    def has_row(self, cls, seed) -> bool:
        """Whether the row of (class, seed) exists (with its context checks)."""
        return (cls, seed) in self.rows

    def has(self, cls, seed, name) -> bool:
        """Whether configuration ``name`` ("pixels": the baselines) of a row is done."""
        row = self.rows.get((cls, seed), {})
        if name == "pixels":
            return all(b in row for b in BASELINES)
        return name in row

    def start_run(self, command: str) -> None:
        """Note the command, hardware and commit of the run that starts now."""
        self.run_started = time.perf_counter()
        self.wall_before = self.data["wall_seconds"]
        if command not in self.data["commands"]:
            self.data["commands"].append(command)
        commit = git_commit()
        # every commit a command ran at: a table built over several runs names them all
        ran_at = self.data.setdefault("command_commits", {}).setdefault(command, [])
        if commit not in ran_at:
            ran_at.append(commit)
        self.data.update(command=command, hardware=hardware(), commit=commit)
        self.data.setdefault("date", date.today().isoformat())

    def add_row(self, cls, seed, **fields) -> None:
        """Start the row of (class, seed) with ``fields``."""
        self.rows[cls, seed] = {"class": cls, "seed": seed, **fields}

    def add(self, cls, seed, name, result: dict) -> None:
        """Store one finished configuration and rewrite the file."""
        row = self.rows[cls, seed]
        if name == "pixels":
            row.update(result)
        else:
            row[name] = result
        self.write()

    def finish(self) -> dict:
        """Write the file a last time and return its contents."""
        self.write()
        return self.data

    def write(self) -> None:
        """Rewrite the file atomically (a temporary file, then a rename)."""
        self.data["rows"] = [self.rows[k] for k in sorted(self.rows)]
        self.data["updated"] = date.today().isoformat()
        self.data["wall_seconds"] = self.wall_before + time.perf_counter() - self.run_started
        self.data["name"] = self.path.stem
        write_json_atomically(self.path, self.data)


def code_at(results) -> str:
    """Say which commit the code ran at: every one, where the file's runs ran at several."""
    commits = [c for cs in results.get("command_commits", {}).values() for c in cs]
    distinct = list(dict.fromkeys(commits))
    if len(distinct) > 1:
        return f"code at commits {', '.join(map(str, distinct))} (each command's below)"
    return f"code at commit {results.get('commit')}"


def command_lines(results) -> list:
    """Return the README lines of a file's commands, each with the commits it ran at."""
    ran_at = results.get("command_commits", {})
    return [f"    {c}" + (f"  # at {', '.join(map(str, ran_at[c]))}" if ran_at.get(c) else "")
            for c in results.get("commands") or [results["command"]]]  # fmt: skip


def write_json_atomically(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


class Eta:
    """Estimate what remains of a run from the fits it has finished, by kind of fit.

    ``parallel`` fits run at once (the workers of a local Dask cluster), so what remains
    takes that many times less time than the fits' own seconds add up to.
    """

    def __init__(self, todo, parallel: int = 1):
        self.left = [name for *_, name in todo]
        self.seconds = {}
        self.parallel = max(1, min(parallel, len(self.left)))

    def tick(self, name: str, seconds: float) -> str:
        """Record a finished fit of kind ``name``; describe it and what remains."""
        self.left.remove(name)
        self.seconds.setdefault(name, []).append(seconds)
        mean_all = np.mean([t for ts in self.seconds.values() for t in ts])
        rest = sum(np.mean(self.seconds.get(n, [mean_all])) for n in self.left)
        rest /= max(1, min(self.parallel, len(self.left)))
        return f"{seconds:.0f} s; {len(self.left)} fits left, about {rest / 60:.0f} min"


def parallel_fits(dask: str | None) -> int:
    """How many fits run at once: one per CPU on a local cluster, else one (a guess)."""
    return (os.cpu_count() or 1) if dask == "local" else 1


def git_commit() -> str | None:
    """Return the commit the code runs at ("+dirty" when tracked files differ from it).

    Results files and logs are not code: changes to them do not count.
    """

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        # results files and logs written by the run itself do not make the code dirty
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                    ":(top,exclude)benchmarks/results", ":(top,exclude)*.log")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


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


def epochs_for(preset: str, minutes: float, costs: Path | None = None) -> int:
    """Epochs of all 6000 images of a class that ``minutes`` of 2 CPU threads buy.

    Priced by the measured seconds per epoch of the preset's row in
    ``results/cost-cpu-frontier.json`` (``cost.py --group frontier``).
    """
    rows = json.loads((costs or ROOT / "results" / "cost-cpu-frontier.json").read_text())["rows"]
    per_epoch = rows[PRESET_COST_ROW[preset]]["seconds_per_epoch_6000"]
    return max(1, round(60 * minutes / per_epoch))


def command_line(preset, classes, seeds, contexts, n_train, out=None, minutes=None) -> str:
    parts = [f"python benchmarks/oneclass.py --preset {preset}"]
    if minutes is not None:
        parts.append(f"--minutes {minutes:g}")
    parts.append("--classes " + " ".join(map(str, classes)))
    parts.append("--seeds " + " ".join(map(str, seeds)))
    parts.append("--contexts " + " ".join(context_name(c) for c in contexts))
    parts.append(f"--n-train {'all' if n_train is None else n_train}")
    if out is not None:
        parts.append(f"--out {out}")
    return " ".join(parts)


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
        stds = [np.nanmean(spreads[name]) if not np.all(np.isnan(spreads[name])) else np.nan
                for name in names]  # fmt: skip
        lines.append("| std over seeds (mean over classes with 2+ seeds) | " + " | ".join(
            "-" if np.isnan(s) else f"{100 * s:.1f}" for s in stds) + " |")  # fmt: skip
    return "\n".join(lines)


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


def render_readme(results) -> None:
    # A class whose row holds only its context checks has no finished fit yet: left out.
    results = {**results, "rows": [r for r in results["rows"] if configurations([r])]}
    body = "\n".join([
        f"Run {results['date']} to {results.get('updated', results['date'])} on "
        f"{results['hardware']}, {code_at(results)}; preset "
        f"`{results['preset']}` "
        f"({', '.join(f'{k}={v}' for k, v in results['settings'].items())}); "
        f"seeds {sorted({r['seed'] for r in results['rows']})}; "
        f"{results['rows'][0]['n_train']} training images per class. AUROC in %, mean over "
        "seeds, best per class in bold.",
        "",
        *command_lines(results),
        "",
        table(results),
        *partial_note(results),
        "",
        "`check_context` on each class's training images (distinctiveness: 0.5 = invisible, "
        "1 = always told apart; alignment: rank correlation of distances; a context passes "
        "at 0.75 and 0.7):",
        "",
        check_table(results),
    ])  # fmt: skip
    render_block(ROOT / "README.md", results["name"], body)


def partial_note(results) -> list:
    """Name the classes a table has not run yet (nothing when it has all ten)."""
    missing = sorted(set(range(len(FASHION_MNIST_CLASSES))) - {r["class"] for r in results["rows"]})
    if not missing:
        return []
    return ["", f"**Partial:** not yet run on classes {', '.join(map(str, missing))}; the means "
            "are over the classes run so far."]  # fmt: skip


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
    parser.add_argument("--minutes", type=float, default=None,
                        help="minutes of 2-thread training per class instead of the preset's "
                        "epochs (priced by results/cost-cpu-frontier.json)")  # fmt: skip
    parser.add_argument(
        "--dask", default=None, metavar="SCHEDULER",
        help="run the fits on a Dask cluster: a scheduler address, or 'local'",
    )  # fmt: skip
    args = parser.parse_args()
    main(
        dask=args.dask,
        minutes=args.minutes,
        preset=args.preset,
        classes=tuple(args.classes),
        seeds=tuple(args.seeds),
        contexts=tuple(parse_context(c) for c in args.contexts),
        n_train=parse_n_train(args.n_train),
        data=args.data,
        out=args.out,
        write_readme=args.write_readme,
    )
