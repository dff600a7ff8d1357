"""The ``con2`` command: fit on a folder of images, score files to CSV, check contexts.

Thin by design: it parses, calls the public API and prints. Every ``Con2Detector``
parameter is an option spelled with dashes, documented from the class docstring and
passed to the estimator only when given, so defaults and validation are the estimator's
own. Data goes to stdout, progress and errors to stderr; an error is one line and a
non-zero exit status (``--debug`` shows the traceback).

    con2 fit normal_images/ --out model.con2 --n-epochs 20 --base-width 16
    con2 score model.con2 new_images/ --out results.csv
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import inspect
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

from con2._version import __version__

# torch is imported by the commands that need it, not by `con2 --help` or `--version`
_PATH_PARAMETERS = {"checkpoint_path", "cache_dir"}  # never split at commas
_CLI_DEFAULTS = {"verbose": 1}  # the one difference: a command line shows progress
_SCORE_BATCH = 1024  # files per call of score_samples; results do not depend on it
_BOOLEAN_TEXT = {"true": True, "yes": True, "on": True, "1": True,
                 "false": False, "no": False, "off": False, "0": False}  # fmt: skip


def main(argv=None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from con2._utils import terminations_as_interrupts  # loads torch: after --help

        with terminations_as_interrupts():  # SIGTERM, SIGHUP: cleaned up as Ctrl-C is
            return args.run(args)
    except KeyboardInterrupt:
        print("con2: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `con2 score ... | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as exc:  # one line for the user; --debug for the traceback
        if args.debug:
            raise
        message = cli_spelling(" ".join(str(exc).split()) or type(exc).__name__)
        print(f"con2: error: {message}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of ``con2`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="con2",
        description="Image anomaly detection with Con2: train on normal images, score new ones.",
    )
    parser.add_argument("--version", action="version", version=f"con2 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.set_defaults(command=None, debug=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_fit(commands)
    _add_score(commands)
    _add_check_context(commands)
    _add_info(commands)
    _add_export(commands)
    return parser


def _subparser(commands, name: str, help: str):
    sub = commands.add_parser(name, help=help, description=help)
    sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show tracebacks of errors")  # fmt: skip
    sub.set_defaults(command=name)
    return sub


def _add_fit(commands) -> None:
    sub = _subparser(commands, "fit", "Train a detector on normal images and save it.")
    sub.add_argument("train", nargs="+", metavar="TRAIN_DIR_OR_FILES",
                     help="folders (every image file below them) and image files")  # fmt: skip
    sub.add_argument("--out", required=True, metavar="MODEL",
                     help="where to save the model (weights-only, see con2.load)")  # fmt: skip
    for name, (default, text) in estimator_options().items():
        shown = _CLI_DEFAULTS.get(name, default)
        flag = option_name(name)
        if isinstance(default, bool) or name == "distributed":
            sub.add_argument(flag, dest=f"param_{name}", nargs="?", const=True,
                             type=_boolean_parser(name), default=argparse.SUPPRESS,
                             metavar="BOOL", help=f"{text} (default: {shown!r}; {flag} alone "
                             f"means true, --no-{flag[2:]} false)")  # fmt: skip
            sub.add_argument(f"--no-{flag[2:]}", dest=f"param_{name}", action="store_false",
                             default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip
        elif name == "context":  # repeated, as check-context takes it, or comma-separated
            sub.add_argument(flag, dest=f"param_{name}", action="append", type=parse_value,
                             default=argparse.SUPPRESS, metavar="NAME",
                             help=f"{text} Repeat it (or separate names by commas) for several "
                             f"contexts; none for no context. (default: {shown!r})")  # fmt: skip
        else:
            sub.add_argument(flag, dest=f"param_{name}", type=_parser_for(name),
                             default=argparse.SUPPRESS, metavar=_metavar(name),
                             help=f"{text} (default: {shown!r})")  # fmt: skip
    sub.set_defaults(run=_fit)


def _add_score(commands) -> None:
    sub = _subparser(commands, "score", "Score image files with a saved model; write CSV.")
    sub.add_argument("model", metavar="MODEL", help="a model saved by `con2 fit`")
    sub.add_argument("paths", nargs="+", metavar="PATHS", help="folders and image files")
    sub.add_argument("--out", metavar="CSV", help="write the CSV here instead of stdout")
    sub.add_argument("--skip-unreadable", action="store_true",
                     help="write a row with an empty score and the reason in an `error` "
                     "column for files that cannot be read, instead of stopping")  # fmt: skip
    sub.add_argument("--device", default=None,
                     help="auto, cpu or cuda (default: where the model was fitted, "
                     "or the CPU when that device is missing)")  # fmt: skip
    sub.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from the rows its --out file already "
                     "holds (the final file is the same as an uninterrupted run's)")  # fmt: skip
    sub.add_argument("--maps", metavar="DIR", default=None,
                     help="also write each file's anomaly map into DIR, named after its path "
                     "below the inputs' common folder: the map over the image at the file's "
                     "resolution (<name>.map.png, its path in a `map` column) and the raw "
                     "map at the model's size (<name>.map.npy); legend.png gives the colour "
                     "scale, one for the whole run")  # fmt: skip
    sub.add_argument("--maps-scale", metavar="VALUE", type=float, default=None,
                     help="the map value drawn at full colour (default: the largest value "
                     "of the run); fix it to compare runs")  # fmt: skip
    sub.add_argument("--maps-method", default="gradient",
                     choices=["gradient", "input-gradient", "integrated", "occlusion"],
                     help="how maps are computed (see Con2Detector.anomaly_maps; default: "
                     "%(default)s)")  # fmt: skip
    sub.set_defaults(run=_score)


def _add_check_context(commands) -> None:
    sub = _subparser(
        commands, "check-context",
        "Measure how distinctive and aligned context augmentations are on images.",
    )  # fmt: skip
    sub.add_argument("paths", nargs="+", metavar="DIR", help="folders and image files")
    sub.add_argument("--context", action="append", required=True, metavar="NAME",
                     help="vflip, invert or equalize; repeat to check several")  # fmt: skip
    sub.add_argument("--max-samples", type=int, default=512,
                     help="images drawn at random for the check (default: 512)")  # fmt: skip
    sub.add_argument("--image-shape", type=_parser_for("image_shape"), default=None,
                     metavar="C,H,W", help="resize the files to this shape first")  # fmt: skip
    sub.add_argument("--value-range", type=_parser_for("value_range"), default=None,
                     metavar="LOW,HIGH", help="intensity range of the files' values")  # fmt: skip
    sub.add_argument("--random-state", type=int, default=0, help="draws the sample")
    sub.set_defaults(run=_check_context)


def _add_info(commands) -> None:
    sub = _subparser(commands, "info", "Show what a saved or exported model holds.")
    sub.add_argument("model", metavar="MODEL",
                     help="a model saved by `con2 fit`, or a .onnx / .pt2 export")  # fmt: skip
    sub.set_defaults(run=_info)


def _add_export(commands) -> None:
    sub = _subparser(commands, "export", "Export a saved model as one ONNX or torch.export graph.")
    sub.add_argument("model", metavar="MODEL", help="a model saved by `con2 fit`")
    sub.add_argument("--format", choices=["onnx", "pt2"], default="onnx",
                     help="onnx (needs the export extra) or pt2 (default: onnx)")  # fmt: skip
    sub.add_argument("--out", required=True, metavar="FILE", help="where to write the graph")
    sub.set_defaults(run=_export)


def _export(args) -> int:
    from con2._detector import load
    from con2._persistence import check_output

    check_output(args.out, "the export (--out)")
    detector = load(args.model, device="cpu")
    detector.export(args.out, format=args.format)
    shape = "x".join(map(str, detector.image_shape_))
    print(f"con2: wrote {args.out} (input `images`: N x {shape})", file=sys.stderr)
    return 0


def estimator_options() -> dict:
    """Each ``Con2Detector`` parameter: its default and its documentation, in plain text.

    Read from the source of ``con2/_detector.py`` rather than the class, so that
    ``con2 fit --help`` answers without importing torch.
    """
    source = Path(importlib.util.find_spec("con2._detector").origin).read_text()
    tree = ast.parse(source)
    cls = next(node for node in tree.body
               if isinstance(node, ast.ClassDef) and node.name == "Con2Detector")  # fmt: skip
    init = next(node for node in cls.body
                if isinstance(node, ast.FunctionDef) and node.name == "__init__")  # fmt: skip
    docs = _parameter_docs(ast.get_docstring(cls, clean=False))
    arguments = init.args.kwonlyargs
    defaults = [ast.literal_eval(d) for d in init.args.kw_defaults]
    return {a.arg: (default, plain_text(docs.get(a.arg, "")))
            for a, default in zip(arguments, defaults, strict=True)}  # fmt: skip


def option_name(parameter: str) -> str:
    """Spell an estimator parameter as its option: ``batch_size`` -> ``--batch-size``."""
    return "--" + parameter.replace("_", "-")


def plain_text(text: str) -> str:
    """Text of a docstring without its reStructuredText markup, for ``--help``."""
    text = re.sub(r":\w+:`~?([^`<]*?)(?: <[^>]*>)?`", lambda m: m.group(1).split(".")[-1]
                  if "~" in m.group(0) else m.group(1), text)  # fmt: skip
    return text.replace("``", "").replace("`", "")


def cli_spelling(message: str) -> str:
    """Rewrite an error message with the estimator's parameters spelled as options."""
    message = message.replace("image_shape=(n_channels, height, width)", "--image-shape C,H,W")
    message = message.replace("value_range=(low, high)", "--value-range LOW,HIGH")
    message = re.sub(r"The '(\w+)' parameter of Con2Detector",
                     lambda m: f"The {option_name(m.group(1))} option", message)  # fmt: skip
    for name in sorted(estimator_options(), key=len, reverse=True):
        message = re.sub(rf"(?<![\w.-]){name}=", f"{option_name(name)} ", message)
        message = message.replace(f"'{name}'", option_name(name))
        if "_" in name:  # a bare word such as "image_shape must ..." (never plain English)
            message = re.sub(rf"(?<![\w.-]){name}(?!\w)", option_name(name), message)
    return message


def _parameter_docs(docstring: str) -> dict:
    """Map each parameter of a numpydoc ``Parameters`` section to its description.

    Independent of the docstring's indentation (it is dedented first): the section runs
    from its underlined title to the next underlined title; a parameter line is
    ``name : type`` at the section's indentation, continued by lines ending in a
    backslash; its description is every deeper-indented line that follows.
    """
    lines = inspect.cleandoc(docstring).splitlines()

    def title(i):  # an underlined section title starts at line i
        return i + 1 < len(lines) and lines[i].strip() and set(lines[i + 1].strip()) == {"-"}

    start = next(i for i in range(len(lines)) if title(i) and lines[i].strip() == "Parameters")
    indent = len(lines[start]) - len(lines[start].lstrip())
    docs, name, continued = {}, None, False
    for i in range(start + 2, len(lines)):
        line = lines[i]
        depth = len(line) - len(line.lstrip())
        if title(i):
            break
        if continued:  # the type spills over to this line
            continued = line.rstrip().endswith("\\")
            continue
        header = re.match(r"(\w+) :", line[indent:]) if depth == indent else None
        if header:
            name, continued = header.group(1), line.rstrip().endswith("\\")
            docs[name] = []
        elif name is not None and depth > indent:
            docs[name].append(line.strip())
    return {k: " ".join(v).replace("%", "%%") for k, v in docs.items()}


def _metavar(name: str) -> str:
    return {"image_shape": "C,H,W", "value_range": "LOW,HIGH"}.get(name, name.upper())


def _parser_for(name: str):
    """How an option's text becomes a value; the estimator validates the value."""
    if name in _PATH_PARAMETERS:
        return lambda text: None if text.lower() == "none" else text
    return parse_value


def _boolean_parser(name: str):
    """Parse the usual spellings of a boolean (and ``auto`` for ``distributed``)."""

    def parse(text: str):
        lowered = text.lower()
        if name == "distributed" and lowered == "auto":
            return "auto"
        if lowered not in _BOOLEAN_TEXT:
            raise argparse.ArgumentTypeError(
                f"expected true or false (yes/no, on/off, 1/0); got {text!r}"
            )
        return _BOOLEAN_TEXT[lowered]

    return parse


def parse_value(text: str):
    """``none``, ``true``/``false``, numbers, comma-separated tuples, else the text."""
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part)
    lowered = text.lower()
    if lowered == "none":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _inputs(paths: list):
    """One folder or file as given, several as one list of files (folders expanded)."""
    from con2 import io

    return paths[0] if len(paths) == 1 else io.list_images(paths)


def _estimator_params(args) -> dict:
    """Collect the estimator's parameters the command line gave (and the CLI's default)."""
    params = {**_CLI_DEFAULTS}
    params.update({k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_")})
    if "context" in params:  # --context a --context b,c: every name given, in order
        names = [n for value in params["context"]
                 for n in (value if isinstance(value, tuple) else (value,))]  # fmt: skip
        params["context"] = names[0] if len(names) == 1 else names
    return params


def _fit(args) -> int:
    from con2._detector import Con2Detector
    from con2._persistence import check_output

    check_output(args.out, "the model (--out)")  # before any image is decoded
    detector = Con2Detector(**_estimator_params(args))
    started = time.perf_counter()
    detector.fit(_inputs(args.train))
    where = _save_or_rescue(detector, args.out)
    print(
        f"con2: trained on {detector.n_samples_fit_} images of shape {detector.image_shape_} "
        f"in {time.perf_counter() - started:.0f} s on {detector.device_}; saved {where}",
        file=sys.stderr,
    )
    return 0


def _save_or_rescue(detector, path) -> str:
    """Save the trained model; when that fails (a full disk), save it anywhere that works.

    Training is the expensive part: a save that fails after it tries the temporary
    folder and the current one before giving up, and the error says where the model is.
    """
    import tempfile

    try:
        detector.save(path)
        return str(path)
    except OSError as exc:
        for folder in (tempfile.gettempdir(), os.getcwd()):
            rescue = Path(folder) / f"con2-rescued-{os.getpid()}.con2"
            try:
                detector.save(rescue)
            except OSError:
                continue
            raise OSError(f"could not save {path} ({exc.strerror or exc}); the trained model "
                          f"is in {rescue}: move it where it belongs") from exc  # fmt: skip
        raise


def _score(args) -> int:
    from con2 import io
    from con2._detector import load
    from con2._persistence import check_output

    _refuse_swapped(args.model, args.paths)
    if args.out:
        check_output(args.out, "the scores (--out)")
    if args.maps_scale is not None and not args.maps_scale > 0:
        raise ValueError(f"--maps-scale must be a positive number; got {args.maps_scale:g}.")
    maps_folder = _maps_folder(args.maps) if args.maps else None
    detector = load(args.model, device=args.device)
    detector.verbose = 0  # the command shows its own progress
    paths = io.list_images(args.paths)
    maps = MapWriter(maps_folder, paths, detector, args.maps_method) if maps_folder else None
    header = (["path", "score", "decision", "label"] + (["map"] if maps else [])
              + (["error"] if args.skip_unreadable else []))  # fmt: skip
    if not args.out:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        _write_scores(detector, paths, writer, sys.stdout, args.skip_unreadable, maps)
        _draw_maps(maps, args.maps_scale)
        return 0
    partial = Path(f"{args.out}.partial")  # beside the target: renamed at the end
    done = _rows_written(partial, header, paths) if args.resume else 0
    with open(partial, "a" if done else "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        if not done:
            writer.writerow(header)
        try:
            _write_scores(detector, paths[done:], writer, out, args.skip_unreadable, maps)
        except BaseException:
            print(f"con2: the scores so far are in {partial}; the same command with --resume "
                  "continues from them", file=sys.stderr)  # fmt: skip
            raise
    _draw_maps(maps, args.maps_scale)
    os.replace(partial, args.out)
    return 0


def _write_scores(detector, paths: list, writer, out, skip_unreadable: bool, maps=None) -> None:
    """Score ``paths`` a batch at a time and write their rows, flushed batch by batch.

    With ``maps`` (a :class:`MapWriter`), each readable file's raw map is saved too.
    """
    from tqdm.auto import tqdm

    with tqdm(total=len(paths), desc="con2 score", unit="file",
              disable=maps is None or not sys.stderr.isatty()) as bar:  # fmt: skip
        for start in range(0, len(paths), _SCORE_BATCH):
            batch = paths[start : start + _SCORE_BATCH]
            scores, errors = _score_batch(detector, batch, skip_unreadable)
            pictures = maps.save_raw([p for p in batch if p not in errors]) if maps else {}
            for path in batch:
                if path in errors:
                    writer.writerow([path, "", "", "", *([""] if maps else []), errors[path]])
                    continue
                score = scores[path]
                decision = score - detector.offset_
                row = [path, repr(score), repr(decision), "anomaly" if decision < 0 else "normal"]
                row += [pictures[path]] if maps else []
                writer.writerow(row + ([""] if skip_unreadable else []))
            out.flush()
            bar.update(len(batch))


def _maps_folder(folder) -> Path:
    """Return ``--maps``' folder, created if its parent exists; refuse a file or no permission."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--maps {folder} is a file, not a folder.")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise ValueError(f"the folder of --maps {folder}, {folder.parent}, does not exist.")
        folder.mkdir()
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"--maps {folder} cannot be written: no permission.")
    return folder


class MapWriter:
    """The files of ``con2 score --maps``: raw maps while scoring, pictures at the end.

    Each input's files are named after its path below the inputs' common folder (so two
    sub-folders' ``a.png`` never collide): ``<relative path>.map.npy`` (float32, the
    model's size) and ``<relative path>.map.png`` (the map over the image, at the
    file's own resolution). Pictures are drawn once every map is known, on one colour
    scale for the run.
    """

    def __init__(self, folder: Path, paths: list, detector, method: str):
        self.folder, self.detector, self.method = folder, detector, method
        absolute = [Path(p).resolve() for p in paths]
        root = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
        self.names = {p: str(a.relative_to(root)) for p, a in zip(paths, absolute, strict=True)}
        self.saved = []

    def picture(self, path) -> Path:
        """Return where the picture of ``path`` goes."""
        return self.folder / f"{self.names[path]}.map.png"

    def raw(self, path) -> Path:
        """Return where the raw map of ``path`` goes."""
        return self.folder / f"{self.names[path]}.map.npy"

    def save_raw(self, paths: list) -> dict:
        """Compute and save the maps of ``paths``; return each one's picture path (as text)."""
        import numpy as np

        found = self.detector.anomaly_maps(paths, method=self.method) if paths else []
        for path, values in zip(paths, found, strict=True):
            target = self.raw(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, values)
        return {path: str(self.picture(path)) for path in paths}

    def draw(self, scale: float | None) -> float:
        """Draw every picture of the maps saved (also by an interrupted run); return the scale."""
        import numpy as np
        from PIL import Image, ImageDraw

        from con2 import io
        from con2.maps import heat, overlay

        paths = [p for p in self.names if self.raw(p).exists()]
        if scale is None:
            scale = max((float(np.load(self.raw(p)).max()) for p in paths), default=0.0)
            scale = scale if scale > 0 else 1.0  # all maps 0: nothing to colour
        value_range = self.detector.value_range
        for path in paths:
            (width, height) = io.inspect_files([path])[0].size
            image = io.decode(path, (3, height, width), np.float32, value_range)
            values = Image.fromarray(np.load(self.raw(path))).resize(
                (width, height), Image.Resampling.BILINEAR)  # fmt: skip
            picture = overlay(image.transpose(1, 2, 0), np.asarray(values), scale)
            Image.fromarray(picture).save(self.picture(path))
        ramp = heat(np.tile(np.linspace(0, 1, 256), (16, 1)))
        legend = Image.new("RGB", (300, 44), "white")
        legend.paste(Image.fromarray(np.round(255 * ramp).astype(np.uint8)), (22, 4))
        draw = ImageDraw.Draw(legend)
        draw.text((22, 24), "0", fill="black")
        draw.text((200, 24), f"{scale:.3g}", fill="black")
        legend.save(self.folder / "legend.png")
        (self.folder / "legend.txt").write_text(
            f"map value at full colour: {scale!r} (0: the image unchanged)\n"
        )
        return scale


def _draw_maps(maps, scale) -> None:
    if maps is None:
        return
    used = maps.draw(scale)
    print(f"con2: maps in {maps.folder}; colour scale 0 to {used:.3g} (legend.png)",
          file=sys.stderr)  # fmt: skip


def _rows_written(partial: Path, header: list, paths: list) -> int:
    """How many rows an interrupted ``--out`` file holds (whole lines only); 0 without one.

    The file is cut back to its last whole line, and must be the start of this run's
    output: the same header and the same files in the same order.
    """
    if not partial.exists():
        print(f"con2: no interrupted run to resume ({partial} does not exist); scoring "
              "everything", file=sys.stderr)  # fmt: skip
        return 0
    text = partial.read_text()
    whole = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(whole.splitlines()))
    if not rows or rows[0] != header:
        raise ValueError(f"{partial} is not the start of this command's output (another "
                         "header); remove it, or run without --resume")  # fmt: skip
    written = [row[0] for row in rows[1:]]
    if written != paths[: len(written)]:
        raise ValueError(f"{partial} holds other files than this command scores; remove "
                         "it, or run without --resume")  # fmt: skip
    partial.write_text(whole)  # without a half-written last line
    return len(written)


def _refuse_swapped(model: str, paths: list) -> None:
    """Name the mistake of ``con2 score IMAGES MODEL``."""
    if Path(model).is_dir() and any(_looks_like_model(p) for p in paths):
        raise ValueError(
            f"{model} is a folder and {next(p for p in paths if _looks_like_model(p))} looks "
            "like a model: the arguments look swapped; write con2 score MODEL PATHS..."
        )


def _looks_like_model(path) -> bool:
    """Tell whether ``path`` looks like a model: a .con2 name or a zip archive (torch.save's)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return path.suffix == ".con2" or f.read(4) == b"PK\x03\x04"


def _score_batch(detector, paths: list, skip_unreadable: bool):
    """Scores of the readable files by path, and the reason each other file failed."""
    from con2 import io

    errors, readable = {}, list(paths)
    while readable:
        try:
            scores = detector.score_samples(readable)
            return dict(zip(readable, map(float, scores), strict=True)), errors
        except io.ImageFileError as exc:
            if not skip_unreadable:
                raise
            errors[exc.path] = exc.reason
            readable = [p for p in readable if p != exc.path]
    return {}, errors


def _check_context(args) -> int:
    import numpy as np

    from con2.contexts import check_context

    reports = check_context(
        _inputs(args.paths), list(args.context), max_samples=args.max_samples,
        image_shape=args.image_shape, value_range=args.value_range,
        random_state=args.random_state,
    )  # fmt: skip
    print(f"{'context':<12} {'images':>6} {'distinctiveness':>16} {'alignment':>10}  verdict")
    for name, report in zip(args.context, reports, strict=True):
        alignment = "undefined" if np.isnan(report.alignment) else f"{report.alignment:.3f}"
        verdict = "ok" if report.passed else (
            "not distinctive" if not report.distinctive else "not aligned")  # fmt: skip
        print(f"{name:<12} {report.n_samples:>6} {report.distinctiveness:>16.3f} "
              f"{alignment:>10}  {verdict}")  # fmt: skip
    return 0


def _info(args) -> int:
    from con2 import _persistence
    from con2._detector import load

    if str(args.model).endswith((".onnx", ".pt2")):
        from con2.export import read_metadata

        found = read_metadata(args.model)
        width = max(map(len, found))
        for key, value in found.items():
            print(f"{key:<{width}}  {value}")
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a CUDA model shown on a CPU machine
        _, fitted, payload = _persistence.read(args.model)
        detector = load(args.model, device="cpu")
    params = detector.get_params()
    scorer = detector.scorer_
    scorer_params = ", ".join(f"{k}={v!r}" for k, v in scorer.get_params().items())
    value_range = detector.value_range
    lines = {
        "file": args.model,
        "written by": f"con2 {payload.get('con2_version')} (format {payload['format']} "
        f"version {payload['format_version']})",
        "contexts": ", ".join(type(c).__name__ for c in detector.contexts_) or "none",
        "scorer": f"{type(scorer).__name__}({scorer_params})",
        "image shape": f"{detector.image_shape_} (n_channels, height, width)",
        "value range": "None (uint8 or [0, 1])" if value_range is None else repr(value_range),
        "threshold": f"offset_ = {detector.offset_!r} (contamination {detector.contamination!r})",
        "training images": str(detector.n_samples_fit_ or "not recorded"),
        "epochs trained": str(len(detector.loss_curve_)),
        "loss at the end": f"{detector.loss_curve_[-1]:.4f}" if detector.loss_curve_ else "n/a",
        "fitted on": fitted["device_"],
        "precision": f"{detector.precision_} (training's forward and backward passes)",
    }  # fmt: skip
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    print("parameters:")
    for key in sorted(params):
        if "__" not in key and key != "scorer":
            print(f"  {key} = {params[key]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
