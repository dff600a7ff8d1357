"""What every benchmark script shares: options, run records, results files, README blocks.

A benchmark is one script over this module and, for Fashion-MNIST, ``_protocol.py``
(timm's ``benchmark.py`` over ``timm/utils``): the script says what it measures and how
its table reads; everything it would otherwise copy from another script is here.

- :func:`add_options` and :func:`parse_options`: the options several scripts share
  (``--classes``, ``--seeds``, ``--data``, ``--out``, ``--write-readme``, ``--dask``);
- :func:`command_line`: the command that reruns a run, as its results file records it;
- :func:`run_metadata`: date, hardware (with torch's threads) and commit of a run;
- :class:`ResultsFile`: the results JSON, written atomically, that a rerun continues;
- :func:`render_block`, :func:`run_header`, :func:`code_at`, :func:`command_lines`: the
  README block of a results file;
- :func:`fan_out`, :func:`parallel_fits`, :class:`Eta`: fits fanned out over Dask, and
  an estimate of what remains.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
ALL_CLASSES = tuple(range(10))


def add_options(parser, *names: str, classes: tuple = ALL_CLASSES, seeds: tuple = (0,)):
    """Add the options several scripts share to ``parser``, by name, and return it.

    ``names``: any of ``"classes"``, ``"seeds"``, ``"data"``, ``"out"``,
    ``"write-readme"`` and ``"dask"``; ``classes`` and ``seeds`` are the script's defaults.
    """
    options = {
        "classes": (("--classes",), dict(type=int, nargs="+", default=list(classes))),
        "seeds": (("--seeds",), dict(type=int, nargs="+", default=list(seeds))),
        "data": (("--data",), dict(default=None, help="folder of the Fashion-MNIST IDX files")),
        "out": (("--out",), dict(default=None, help="results file (default: under results/)")),
        "write-readme": (("--write-readme",), dict(action="store_true")),
        "dask": (("--dask",), dict(default=None, metavar="SCHEDULER",
                                   help='fan the fits out over a Dask cluster: a scheduler '
                                   'address, or "local" (one worker per CPU)')),
    }  # fmt: skip
    for name in names:
        flags, settings = options[name]
        parser.add_argument(*flags, **settings)
    return parser


def parse_options(parser, args=None) -> dict:
    """Parse the command line into ``main``'s keyword arguments (lists become tuples)."""
    parsed = vars(parser.parse_args(args))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in parsed.items()}


def command_line(script: str, *options: tuple) -> str:
    """Return the command that reruns a benchmark: ``python benchmarks/<script>`` and options.

    ``options`` are ``(flag, value)`` pairs in the order written. A value of None or
    False leaves its option out and True writes the flag alone; a list or tuple is
    written space-separated and a float as ``:g`` (``--budget 180``). A flag of None
    writes the value alone (a positional argument).
    """
    parts = [f"python benchmarks/{script}"]
    for flag, value in options:
        if value is None or value is False:
            continue
        if isinstance(value, list | tuple):
            value = " ".join(map(str, value))
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(flag if value is True else str(value) if flag is None else f"{flag} {value}")
    return " ".join(parts)


def hardware(device=None) -> str:
    """Describe the GPU a run uses, or the CPU: model, instruction set, torch's threads.

    The instruction set is torch's CPU capability (AVX2, AVX512, ...): two CPUs of one
    model name can differ in it, and with it in speed and float rounding.

    ``device``: the run's device (``"cpu"`` describes the CPU even where a GPU exists);
    None: the GPU if there is one.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({capability}), {torch.get_num_threads()} threads (CPU)"


def git_commit(folder: Path = ROOT) -> str | None:
    """Return the commit the code runs at ("+dirty" when tracked files differ from it).

    Results files and logs are not code: changes to them do not count. ``folder``: any
    folder of the repository (this one by default).
    """

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        # results files and logs written by the run itself do not make the code dirty
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                    ":(top,exclude)benchmarks/results", ":(top,exclude)*.log")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_metadata(device=None) -> dict:
    """Date, hardware (see :func:`hardware`) and commit of a run that starts now."""
    return {"date": date.today().isoformat(), "hardware": hardware(device), "commit": git_commit()}


class ResultsFile:
    """A benchmark's results JSON file: always written atomically, continued by a rerun.

    A *table* (``resume=True``) grows over runs. ``identity`` (preset, settings, ...)
    names it, and a file with another identity is refused rather than mixed in. Its rows
    are one per (class, seed) in a list (``rows="list"``: ``{"class", "seed", ...}``, the
    one-class tables' schema) or one per class in a dict keyed by the class as a string
    (``rows="dict"``). A script asks :meth:`has` what is done, so that the same command
    run again skips it, and saves each result as it finishes (:meth:`add` or
    :meth:`save`): an interruption loses at most the fit in progress.

    A *measurement* (``resume=False``) is made whole by one run and replaces the file.

    A run (:meth:`start_run`) is recorded with its first save, not when it starts, so a
    rerun with nothing left to do leaves the file, and the README block rendered from
    it, as it was run: ``command``, ``hardware``, ``commit`` and ``date`` and, for a
    table, ``commands`` (every command that added to it), ``command_commits`` (every
    commit each command ran at), ``updated`` (the last run's date) and ``wall_seconds``.
    """

    def __init__(self, path, identity: dict | None = None, rows: str = "list",
                 resume: bool = True):  # fmt: skip
        self.path = Path(path)
        self.identity = dict(identity or {})
        self.resume = resume
        self.keyed = rows == "dict"
        self.data = {**self.identity, **({"rows": {} if self.keyed else []} if resume else {})}
        if resume and self.path.exists():
            self.data = self._read()
        rows = self.data.get("rows", [])
        self._rows = rows if self.keyed else {(r["class"], r["seed"]): r for r in rows}
        self._run, self._recorded, self._started = None, False, time.perf_counter()
        self._wall_before = self.data.get("wall_seconds", 0.0)

    def _read(self) -> dict:
        data = json.loads(self.path.read_text())
        theirs = {k: data.get(k) for k in self.identity}
        if json.loads(json.dumps(self.identity)) != theirs:
            raise ValueError(
                f"{self.path} holds another table ({theirs}), not {self.identity}; pass "
                "another --out, or remove the file to start afresh."
            )
        return data

    def _key(self, key):
        return str(key) if self.keyed else tuple(key)

    def has(self, key, *names: str) -> bool:
        """Whether the row of ``key`` exists and holds every one of ``names``.

        ``key``: (class, seed) for list rows, the class for dict rows.
        """
        row = self._rows.get(self._key(key))
        return row is not None and all(name in row for name in names)

    def row(self, key) -> dict:
        """Return the row of ``key`` to fill in (a new, empty row if there is none)."""
        if self._key(key) not in self._rows:
            self.add_row(key)
        return self._rows[self._key(key)]

    def add_row(self, key, **fields) -> None:
        """Start the row of ``key`` with ``fields`` (saved with the next result)."""
        start = {} if self.keyed else {"class": key[0], "seed": key[1]}
        self._rows[self._key(key)] = {**start, **fields}

    def add(self, key, name: str | None, result: dict) -> None:
        """Store one finished result in the row of ``key`` and save the file.

        ``name`` None merges ``result``'s keys into the row itself. The fit's checkpoint
        (:meth:`checkpoint`), if any, is removed once the result is saved (its folder, once
        empty, by :meth:`finish`: fits still training write to it).
        """
        row = self.row(key)
        if name is None:
            row.update(result)
        else:
            row[name] = result
        self.save()
        if name is not None:
            self._checkpoint_file(key, name).unlink(missing_ok=True)

    def checkpoint(self, key, name: str) -> Path:
        """Return the checkpoint file of one fit of this table, creating its folder.

        A run killed mid-fit leaves it, and the same command resumes that fit from its last
        epoch (``run_con2``'s ``checkpoint``) instead of training it again from the start.
        """
        path = self._checkpoint_file(key, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def _checkpoints(self) -> Path:
        return self.path.parent / f"{self.path.stem}.checkpoints"

    def _checkpoint_file(self, key, name: str) -> Path:
        parts = [key] if self.keyed else list(key)
        return self._checkpoints / f"{'-'.join(map(str, [*parts, name]))}.ckpt"

    def start_run(self, command: str, device=None) -> None:
        """Note the command (see :func:`command_line`) and metadata of the run starting now."""
        self._run = {"command": command, **run_metadata(device)}
        self._recorded, self._started = False, time.perf_counter()
        self._wall_before = self.data.get("wall_seconds", 0.0)

    def _record_run(self) -> None:
        run = self._run
        if not self.resume:
            self.data.update(run)
            return
        command, commit = run["command"], run["commit"]
        # a file from before ``commands`` and ``command_commits`` were kept: its one command
        # ran at its one commit (where it records one)
        before = self.data.get("command")
        commands = self.data.setdefault("commands", [before] if before else [])
        if before and self.data.get("commit") and "command_commits" not in self.data:
            self.data["command_commits"] = {before: [self.data["commit"]]}
        if command not in commands:
            commands.append(command)
        # every commit a command ran at: a table built over several runs names them all
        ran_at = self.data.setdefault("command_commits", {}).setdefault(command, [])
        if commit not in ran_at:
            ran_at.append(commit)
        # every machine the runs that added something ran on, in order: a table trained
        # over sessions on different CPUs names them all (``hardware`` stays the latest's)
        machines = self.data.setdefault("hardwares", [self.data.get("hardware")] if
                                        self.data.get("hardware") else [])  # fmt: skip
        if run["hardware"] not in machines:
            machines.append(run["hardware"])
        self.data.update(command=command, hardware=run["hardware"], commit=commit)
        self.data.setdefault("date", run["date"])

    def save(self) -> None:
        """Record the run (with its first save) and rewrite the file atomically."""
        if self._run is not None and not self._recorded:
            self._record_run()
            self._recorded = True
        if self.resume:
            if not self.keyed:
                self.data["rows"] = [self._rows[k] for k in sorted(self._rows)]
            self.data["updated"] = date.today().isoformat()
            elapsed = time.perf_counter() - self._started
            self.data["wall_seconds"] = self._wall_before + elapsed
            self.data["name"] = self.path.stem
        write_json(self.path, self.data)

    def finish(self) -> dict:
        """Save a last time if this run added anything; return the file's contents."""
        if self._recorded:
            self.save()
        if self._checkpoints.is_dir() and not any(self._checkpoints.iterdir()):
            self._checkpoints.rmdir()
        return self.data


def measured_seconds(result: dict) -> float:
    """Return the seconds one fit took.

    That is ``fit_seconds``, or for a fit resumed from a checkpoint (whose ``fit_seconds``
    count only from the resumption) the seconds of all its epochs.
    """
    return result["train_seconds"] if result.get("resumed") else result["fit_seconds"]


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as JSON, atomically (see :func:`write_atomically`)."""
    write_atomically(Path(path), json.dumps(data, indent=1))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


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
    write_atomically(readme, text)


def run_header(results) -> str:
    """Say when, where and at which code a results file ran: "Run <date> on <hardware>...".

    The dates run from the first run's to the last one's where the file records both,
    the hardware names every machine the runs ran on (the first first);
    the commits are left out where a file from before they were recorded has none.
    """
    dates = results["date"] + (f" to {results['updated']}" if "updated" in results else "")
    machines = results.get("hardwares") or [results["hardware"]]
    header = f"Run {dates} on {' and on '.join(machines)}"
    if results.get("commit") is None and not results.get("command_commits"):
        return header
    return f"{header}, {code_at(results)}"


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


def fan_out(function, calls: list, dask: str | None):
    """Yield ``(i, function(*calls[i]))`` for every call, in the order they finish.

    Here one after the other, or fanned out over a Dask cluster (``dask``: a scheduler
    address, or ``"local"`` for a local cluster of one single-threaded worker process per
    CPU, so that workers times threads never exceeds the cores; Dask's nanny starts
    workers with ``OMP_NUM_THREADS=1``, which torch follows). ``function`` must live in a
    script of this folder: the script, this module and ``_protocol.py`` are uploaded to
    the workers. The caller records each result as it arrives, so an interrupted run
    keeps everything finished.
    """
    if dask is None:
        for i, call in enumerate(calls):
            yield i, function(*call)
        return
    from dask import config as dask_config
    from distributed import Client, LocalCluster, as_completed

    function = _importable(function)
    environ = dict(os.environ)
    # Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap
    # threshold at 128 KiB: nearly every tensor of a training step is then mapped and
    # unmapped afresh (page faults), which made one-thread fits over twice as slow here.
    # Local workers start without it; a remote cluster's workers keep their own setting.
    with dask_config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = (LocalCluster(n_workers=os.cpu_count(), threads_per_worker=1,
                                dashboard_address=None) if dask == "local" else None)  # fmt: skip
    # Dask's nanny sets OMP_NUM_THREADS=1 (and more) in *this* process's environment
    # before spawning a worker and never restores it; undo that so that processes this
    # one starts later get the caller's thread settings.
    os.environ.clear()
    os.environ.update(environ)
    modules = dict.fromkeys(["_harness", "_protocol", function.__module__])
    try:
        with Client(cluster or dask) as client:
            for name in modules:  # saved where the workers import from, not imported here
                client.upload_file(str(ROOT / f"{name}.py"), load=False)
            futures = {client.submit(function, *call, pure=False): i
                       for i, call in enumerate(calls)}  # fmt: skip
            for future in as_completed(futures):
                yield futures[future], future.result()
    finally:
        if cluster is not None:
            cluster.close()


def worker_environment(*names) -> dict:
    """Return the environment variables ``names`` where this runs (on a worker, in tests)."""
    return {name: os.environ.get(name) for name in names}


def _importable(function):
    """Return the same function imported by its script's name, which Dask workers unpickle.

    A script run as ``python benchmarks/x.py`` is ``__main__``, which a worker cannot
    import; imported as ``x`` it can.
    """
    if function.__module__ != "__main__":
        return function
    script = Path(sys.modules["__main__"].__file__).stem
    return getattr(importlib.import_module(script), function.__name__)


def parallel_fits(dask: str | None) -> int:
    """How many fits run at once: one per CPU on a local cluster, else one (a guess)."""
    return (os.cpu_count() or 1) if dask == "local" else 1


class Eta:
    """Estimate what remains of a run from the fits it has finished, by kind of fit.

    ``todo``: the run's units, each a tuple whose last item is its kind. ``parallel``
    fits run at once (the workers of a local Dask cluster), so what remains takes that
    many times less time than the fits' own seconds add up to.
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
