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
import csv
import inspect
import re
import sys
import time
import warnings

import numpy as np

from con2 import io
from con2._detector import Con2Detector, load
from con2._version import __version__

_PATH_PARAMETERS = {"checkpoint_path", "cache_dir"}  # never split at commas
_CLI_DEFAULTS = {"verbose": 1}  # the one difference: a command line shows progress
_SCORE_BATCH = 1024  # files per call of score_samples; results do not depend on it


def main(argv=None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("con2: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug for the traceback
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
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
        sub.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}",
                         type=_parser_for(name), default=argparse.SUPPRESS,
                         metavar=_metavar(name), help=f"{text} (default: {shown!r})")  # fmt: skip
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
    detector = load(args.model, device="cpu")
    detector.export(args.out, format=args.format)
    shape = "x".join(map(str, detector.image_shape_))
    print(f"con2: wrote {args.out} (input `images`: N x {shape})", file=sys.stderr)
    return 0


def estimator_options() -> dict:
    """Each ``Con2Detector`` parameter: its default and the first sentence of its doc."""
    docs = _parameter_docs(Con2Detector.__doc__)
    options = {}
    for name, parameter in inspect.signature(Con2Detector).parameters.items():
        options[name] = (parameter.default, docs.get(name, ""))
    return options


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
    return paths[0] if len(paths) == 1 else io.list_images(paths)


def _fit(args) -> int:
    params = {**_CLI_DEFAULTS}
    params.update({k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_")})
    detector = Con2Detector(**params)
    started = time.perf_counter()
    detector.fit(_inputs(args.train))
    detector.save(args.out)
    print(
        f"con2: trained on {detector.n_samples_fit_} images of shape {detector.image_shape_} "
        f"in {time.perf_counter() - started:.0f} s on {detector.device_}; saved {args.out}",
        file=sys.stderr,
    )
    return 0


def _score(args) -> int:
    detector = load(args.model, device=args.device)
    paths = io.list_images(args.paths)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "score", "decision", "label"]
                        + (["error"] if args.skip_unreadable else []))  # fmt: skip
        for start in range(0, len(paths), _SCORE_BATCH):
            batch = paths[start : start + _SCORE_BATCH]
            scores, errors = _score_batch(detector, batch, args.skip_unreadable)
            for path in batch:
                if path in errors:
                    writer.writerow([path, "", "", "", errors[path]])
                    continue
                score = scores[path]
                decision = score - detector.offset_
                row = [path, repr(score), repr(decision), "anomaly" if decision < 0 else "normal"]
                writer.writerow(row + ([""] if args.skip_unreadable else []))
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _score_batch(detector, paths: list, skip_unreadable: bool):
    """Scores of the readable files by path, and the reason each other file failed."""
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
