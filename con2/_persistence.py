"""A weights-only file format for fitted detectors: loading it never runs code.

joblib and pickle files can execute arbitrary code when loaded. :func:`save` writes one
file with :func:`torch.save` that holds only tensors, numbers, strings, lists and dicts:
the constructor parameters and fitted scalars as JSON text, the encoder's ``state_dict``,
the scorer's fitted tensors, the test-time augmentation parameters and the training-image
hashes. :func:`load` reads it with ``torch.load(weights_only=True)``, which refuses
anything else, and rebuilds the detector from the package's own classes. Only built-in
components can travel this way: a user-written context, backbone, objective or scorer is
code, and code is what this format refuses to carry.

Format versions: 1 (con2 before the objective seam) stored the heads as ``head_context``
and ``head_content`` and no objective; it is read as the Con2 objective with the file's
``temperature`` and ``alpha_max``. 2 adds the objective and the epochs' seconds.

Pickling (joblib) goes through :func:`portable_state` and :func:`restore_state`: a
detector fitted on a GPU is pickled with its tensors on the CPU and unpickled on the best
device the loading machine has.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io as _stdio
import json
import math
import os
import pickle
import shutil
import zipfile
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import numpy as np
import torch

from con2._embedding import TestTimeViews
from con2._input import TrainingIndex
from con2._utils import loadable_device, move, resolve_device, warn
from con2._version import __version__
from con2.augment import AugmentParams, SimCLRAugment
from con2.contexts import CONTEXTS, resolve_contexts
from con2.networks import build_encoder
from con2.objectives import OBJECTIVES, resolve_objective
from con2.scorers import SCORERS

FORMAT = "con2-weights"
FORMAT_VERSION = 2
_READS = (1, 2)  # format versions this con2 reads
_FITTED = ("offset_", "image_shape_", "n_features_in_", "loss_curve_", "epoch_seconds_",
           "n_samples_fit_", "precision_")  # fmt: skip
TORCH_STATE = ("encoder_", "scorer_", "contexts_", "views_", "objective_")  # moved when pickled
_IN_PAYLOAD = ("_train_index", "reference_images_")  # pickled inside the weights-only bytes


def save(detector, path) -> None:
    """Write a fitted detector to ``path`` in the weights-only format."""
    _check_builtin(detector)
    if isinstance(detector.random_state, np.random.RandomState):
        warn(
            "random_state is a RandomState instance, which save() cannot store; the loaded "
            "detector has random_state=None (this only matters if it is fitted again)."
        )
    payload = _payload(detector)
    write_replacing(path, lambda file: torch.save(payload, file), "the model")


def _payload(detector) -> dict:
    """Return the weights-only content of a fitted detector of built-in components."""
    params = {k: _plain(k, v) for k, v in detector.get_params(deep=False).items()}
    scorer = detector.scorer_
    params["scorer"] = _spec(SCORERS, scorer)
    if not isinstance(detector.objective, str):
        params["objective"] = _spec(OBJECTIVES, detector.objective)
    fitted = {name: _plain(name, getattr(detector, name, None)) for name in _FITTED}
    fitted["objective"] = _spec(OBJECTIVES, detector.objective_)
    fitted["device_"] = str(detector.device_)
    fitted["contexts"] = [_name(CONTEXTS, c) for c in detector.contexts_]
    fitted["augment"] = asdict(detector.views_.augment)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "con2_version": __version__,
        "params": json.dumps(params),
        "fitted": json.dumps(fitted),
        "encoder": {k: v.cpu() for k, v in detector.encoder_.state_dict().items()},
        "scorer": {
            k: v.cpu() if isinstance(v, torch.Tensor) else v
            for k, v in vars(scorer).items()
            if k.endswith("_")
        },
        "views": {
            f.name: getattr(detector.views_.params, f.name).cpu() for f in fields(AugmentParams)
        },
        "view_contexts": detector.views_.view_contexts.cpu(),
        "train_index": _index_to_tensors(detector._train_index),
        "calibration_scores": torch.from_numpy(np.asarray(detector.calibration_scores_)),
        "reference_images": _reference_images(detector),
    }


def _reference_images(detector):
    """Return the map references as a tensor; None for a model from a file without them."""
    images = getattr(detector, "reference_images_", None)
    return None if images is None else torch.from_numpy(np.asarray(images))


def check_output(path, what: str) -> None:
    """Refuse, in one line and before any work, an output file that cannot be written.

    ``what`` names it in the message ("the model (--out)"): a missing folder, a folder
    where the file should be, or a folder (or file) without write permission.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name.")
    if not folder.exists():
        raise ValueError(f"the folder of {what}, {folder}, does not exist; create it first.")
    if not folder.is_dir():
        raise ValueError(f"{folder}, the folder of {what} {path}, is not a folder.")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"{what} {path} cannot be written: no permission.")


def write_replacing(path, write, what: str) -> None:
    """Write a file by ``write(temporary)`` beside ``path``, then rename it onto ``path``.

    A failed or interrupted write leaves the previous ``path`` whole; a full disk is a
    one-line error that says so.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if not isinstance(exc, Exception):  # an interrupt: nothing to explain
            raise
        # torch's zip writer reports a full disk as a RuntimeError about stream positions;
        # the free space beside the path says what happened
        free = shutil.disk_usage(path.parent).free / 2**20
        raise OSError(
            getattr(exc, "errno", None),
            f"could not write {what} {path} ({getattr(exc, 'strerror', None) or exc}; "
            f"{free:.0f} MiB free in {path.parent}); any previous {path.name} is intact",
        ) from exc


def read(path) -> tuple[dict, dict, dict]:
    """Read a weights-only file; return its constructor parameters, fitted values, payload.

    The scorer parameter comes back as an unfitted built-in scorer; everything else is
    plain data. Refuses pickled objects and other formats, each with a message that says
    what the file is.
    """
    _refuse_other_kinds(Path(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} is not a con2 weights-only file: it holds pickled objects, which can "
            "run code, and this loader refuses them. Load joblib/pickle files only if you "
            "trust their source."
        ) from exc
    except RuntimeError as exc:  # torch's reader: a damaged or truncated archive
        raise ValueError(
            f"{path} is a damaged or truncated file (not a whole zip archive: {exc}); "
            "save the model again."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is a torch file but not a con2 model (no con2 format mark).")
    if payload.get("format_version") not in _READS:
        raise ValueError(
            f"{path} has format version {payload.get('format_version')} (written by con2 "
            f"{payload.get('con2_version')}); con2 {__version__} reads versions "
            f"{', '.join(map(str, _READS))}. Load it with the con2 version that wrote it."
        )
    _warn_if_other_version(path, payload.get("con2_version"))
    params, fitted = json.loads(payload["params"]), json.loads(payload["fitted"])
    if payload["format_version"] == 1:
        params, fitted, payload = _from_version_1(params, fitted, payload)
    params["scorer"] = _build(SCORERS, params["scorer"])
    if isinstance(params["objective"], dict):
        params["objective"] = _build(OBJECTIVES, params["objective"])
    for key in ("image_shape", "value_range"):  # JSON turned the tuples into lists
        if params.get(key) is not None:
            params[key] = tuple(params[key])
    return params, fitted, payload


def _from_version_1(params: dict, fitted: dict, payload: dict) -> tuple:
    """Read a version-1 file as version 2: the Con2 objective, heads renamed."""
    params = {**params, "objective": "con2"}
    objective = resolve_objective("con2", params["temperature"], params["alpha_max"])
    seconds = [math.nan] * len(fitted["loss_curve_"])  # not recorded before version 2
    fitted = {**fitted, "objective": _spec(OBJECTIVES, objective), "epoch_seconds_": seconds}
    renamed = {"head_context.": "heads.context.", "head_content.": "heads.content."}
    encoder = {}
    for key, value in payload["encoder"].items():
        for old, new in renamed.items():
            key = new + key[len(old) :] if key.startswith(old) else key
        encoder[key] = value
    return params, fitted, {**payload, "encoder": encoder}


# what a file is, by its first bytes: for the message when it is not a con2 model
_MAGIC = {
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image", b"BM": "a BMP image", b"GIF8": "a GIF image",
    b"RIFF": "a WEBP image (or another RIFF file)", b"\x93NUMPY": "a numpy .npy file",
}  # fmt: skip


def _refuse_other_kinds(path: Path) -> None:
    """Say what ``path`` is when it is plainly not a con2 model, before torch reads it."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a con2 model file.")
    if not path.exists():
        raise ValueError(f"{path}: no such file.")
    with open(path, "rb") as f:
        head = f.read(512)
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if not head:
        kind = "empty (0 bytes)"
    elif head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("archive_format") for n in names) and any("models/" in n for n in names):
            raise ValueError(
                f"{path} is a torch.export (.pt2) program, not a con2 model; "
                "`con2 info` shows what it holds, torch.export.load runs it."
            )
        return
    elif head.startswith(b"PK\x03\x04"):
        kind = "a damaged or truncated zip archive (a model cut short?)"
    elif head[:1] == b"\x08" and path.suffix == ".onnx":
        raise ValueError(
            f"{path} is an ONNX export, not a con2 model: score it with ONNX "
            "Runtime; `con2 info` shows what it holds."
        )
    elif head[:1] == b"\x80":
        raise ValueError(
            f"{path} holds pickled objects (a joblib or pickle file?), which can "
            "run code: this loader refuses them. Load it with joblib.load only "
            "if you trust its source."
        )
    elif all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        kind = "a text file" + (" (CSV)" if b"," in head else "")
    if kind is not None:
        raise ValueError(f"{path} is {kind}, not a con2 model.")
    raise ValueError(f"{path} is not a con2 model (unrecognised content).")


def _warn_if_other_version(path, written_by) -> None:
    """Warn when the file comes from another major or minor version of con2."""

    def major_minor(version):
        return tuple(str(version).split(".")[:2])

    if written_by is None or major_minor(written_by) != major_minor(__version__):
        warn(
            f"{path} was written by con2 {written_by}; this is con2 {__version__}. The "
            "format is the same, but what the model computes may differ between versions: "
            "check its scores, or refit."
        )


def restore(detector, payload: dict, fitted: dict, device=None) -> None:
    """Give a detector built from the file's parameters its fitted state, on ``device``.

    ``device`` as in :func:`con2.load`: None means the device it was fitted on, or the
    CPU (with a warning) when that device is missing here.
    """
    if device is None:
        target = loadable_device(torch.device(fitted["device_"]))
    else:
        target = resolve_device(device)
    _restore(detector, payload, fitted, target)


def _restore(detector, payload, fitted, device) -> None:
    contexts = resolve_contexts(fitted["contexts"] or None)
    image_shape = tuple(fitted["image_shape_"])
    objective = _build(OBJECTIVES, fitted["objective"])

    def heads(embed_dim):
        return objective.heads(embed_dim, len(contexts))

    encoder = build_encoder(detector.backbone, detector.base_width, image_shape, 0, heads)
    encoder.load_state_dict(payload["encoder"])
    scorer = _build(SCORERS, json.loads(payload["params"])["scorer"])  # a fresh one to fit
    for name, value in payload["scorer"].items():
        setattr(scorer, name, value.to(device) if isinstance(value, torch.Tensor) else value)
    params = AugmentParams(**payload["views"])
    augment = SimCLRAugment(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in fitted["augment"].items()})  # fmt: skip
    detector.encoder_ = encoder.to(device)
    detector.contexts_ = contexts
    detector.objective_ = objective
    detector.scorer_ = scorer
    detector.views_ = TestTimeViews(contexts, augment, params, payload["view_contexts"])
    detector.offset_ = float(fitted["offset_"])
    detector.image_shape_ = image_shape
    detector.n_features_in_ = int(fitted["n_features_in_"])
    detector.loss_curve_ = list(fitted["loss_curve_"])
    detector.epoch_seconds_ = list(fitted["epoch_seconds_"])
    detector.n_samples_fit_ = fitted.get("n_samples_fit_")  # absent from older files
    # files written before precision was a parameter trained in bfloat16 on CUDA only
    default = "bfloat16" if fitted["device_"].startswith("cuda") else "float32"
    detector.precision_ = fitted.get("precision_") or default
    detector.device_ = device
    detector._train_index = _index_from_tensors(payload["train_index"])
    if payload.get("calibration_scores") is not None:  # absent from older files
        detector.calibration_scores_ = payload["calibration_scores"].numpy()
    if payload.get("reference_images") is not None:  # absent from older files
        detector.reference_images_ = payload["reference_images"].numpy()


def _check_builtin(detector) -> None:
    problems = _problems(detector)
    if problems:
        raise TypeError(
            "save() writes built-in components only; this detector uses user-written "
            f"{', '.join(problems)}. Use joblib.dump for it (and load only trusted files)."
        )


def _problems(detector) -> list:
    """List the user-written components of a fitted detector (only pickle carries them)."""
    problems = []
    if not isinstance(detector.backbone, str):
        problems.append(f"backbone {detector.backbone!r}")
    problems += [f"context {c!r}" for c in detector.contexts_ if _name(CONTEXTS, c) is None]
    if _name(SCORERS, detector.scorer_) is None:
        problems.append(f"scorer {detector.scorer_!r}")
    if _name(OBJECTIVES, detector.objective_) is None:
        problems.append(f"objective {detector.objective_!r}")
    return problems


def _name(registry: dict, obj):
    """Registry name of a built-in component instance, or None."""
    for name, cls in registry.items():
        if type(obj) is cls:
            return name
    return None


def _spec(registry: dict, obj) -> dict:
    """Describe a built-in component as plain data: its registry name and parameters.

    A built-in context among the parameters (an objective's ``outliers``) is written as
    its name, which the component takes as well.
    """
    params = {k: _plain(k, v) for k, v in obj.get_params().items()}
    return {"name": _name(registry, obj), "params": params}


def _build(registry: dict, spec: dict):
    """Rebuild a component written by :func:`_spec`."""
    return registry[spec["name"]](**spec["params"])


def _plain(key, value):
    """Return a JSON-ready version of a parameter or fitted value."""
    if isinstance(value, tuple | list):
        return [_plain(key, v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.random.RandomState):
        return None  # save() warns
    name = _name(CONTEXTS, value)
    if name is not None:
        return name
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if key in ("scorer", "objective"):
        return None  # replaced by the component's name and parameters
    raise TypeError(f"save() cannot store parameter {key}={value!r}.")


def _index_to_tensors(index):
    if index is None:
        return None
    return {
        "digests": torch.from_numpy(index.digests.view(np.uint8).reshape(-1, 16).copy()),
        "positions": torch.from_numpy(index.positions.copy()),
    }


def _index_from_tensors(tensors):
    if tensors is None:
        return None
    return TrainingIndex.from_arrays(tensors["digests"].numpy(), tensors["positions"].numpy())


class Checkpoint:
    """A training-state file that a later fit of the same data and settings resumes from.

    Parameters
    ----------
    path : Path
        The file; written atomically (a temporary file, then a rename).
    every : int
        Epochs between saves.
    fingerprint : str
        Identifies the fit (data and settings); a file with another one is ignored.
    """

    def __init__(self, path: Path, every: int, fingerprint: str):
        self.path, self.every, self.fingerprint = Path(path), every, fingerprint

    def load(self):
        """Return the saved state of this fit, or None.

        An empty file (one made to reserve the name, say) counts as no checkpoint; a file
        that is not a checkpoint is refused rather than overwritten: it may be the user's.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        not_ours = ValueError(
            f"checkpoint_path {self.path} exists and is not a con2 checkpoint; remove it or "
            "choose another path."
        )
        if not zipfile.is_zipfile(self.path):  # torch.save writes zip archives
            raise not_ours
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"Checkpoint {self.path} holds pickled objects; refusing to load it."
            ) from exc
        except (EOFError, KeyError, RuntimeError) as exc:  # a zip archive of something else
            raise not_ours from exc
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            warn(
                f"Checkpoint {self.path} belongs to another fit (other data or settings); "
                "training starts afresh and will overwrite it."
            )
            return None
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` (tensors, state dicts, numbers) atomically: the last one stays whole."""
        state = {**state, "fingerprint": self.fingerprint}
        write_replacing(self.path, lambda file: torch.save(state, file), "the checkpoint")


def checkpoint_for(detector, images, plan, start=None):
    """Return the checkpoint of a fit (None without ``checkpoint_path``).

    Its fingerprint covers the training images (values and shape), the device type,
    the objective (its class and parameters) and the precision of the fit's ``plan``
    (a :class:`con2._training.EpochPlan`), every other setting that changes the training
    trajectory and, for a warm start, the weights the fit starts from (``start``), so a
    checkpoint is only resumed by the fit that wrote it.
    """
    if detector.checkpoint_path is None:
        return None
    keys = (
        "context", "backbone", "base_width", "n_epochs", "batch_size", "learning_rate",
        "weight_decay", "random_state", "warm_start",
    )  # fmt: skip
    params = detector.get_params()
    digest = hashlib.blake2b(digest_size=16)
    for first in range(0, images.shape[0], 1024):  # in pieces: images may be on disk
        digest.update(images[first : first + 1024].numpy().tobytes())
    digest.update(repr((tuple(images.shape), plan.device.type)).encode())
    digest.update(b"views keyed by image index")  # not resumable from older checkpoints
    digest.update(repr({k: _describe(params[k]) for k in keys}).encode())
    digest.update(_describe(plan.objective).encode())
    digest.update(f"precision {plan.precision.name}".encode())
    if start is not None:
        for name, tensor in start.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return Checkpoint(detector.checkpoint_path, detector.checkpoint_every, digest.hexdigest())


def _describe(value, depth: int = 0) -> str:
    """Describe a setting for a fingerprint, alike in every process that has the same code.

    A default ``repr`` holds a memory address, which changes with the process: a user's
    backbone function or context object described by it would make a checkpoint that no
    later process (the one that resumes after a crash) recognises. Functions are described
    by their name, code, defaults and closure; other objects by their class and their
    parameters (``get_params``), fields or attributes.
    """
    if depth > 8:
        return "..."

    def describe(inner):
        return _describe(inner, depth + 1)

    if value is None or isinstance(value, str | int | float | bool | os.PathLike):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(describe, value)) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return "{" + ", ".join(f"{key!r}: {describe(inner)}" for key, inner in items) + "}"
    if isinstance(value, functools.partial):
        return "partial" + describe((value.func, value.args, value.keywords))
    name = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
    if isinstance(value, type):
        return name
    code = getattr(value, "__code__", None)
    if code is not None:  # a function: two lambdas of one module share a name, not code
        cells = [_contents(cell) for cell in value.__closure__ or ()]
        digest = hashlib.blake2b(code.co_code, digest_size=8).hexdigest()
        return f"{name}:{digest}({describe(value.__defaults__)}, {describe(cells)})"
    get_params = getattr(value, "get_params", None)
    if callable(get_params):
        attributes = get_params()
    elif is_dataclass(value):
        attributes = {f.name: getattr(value, f.name) for f in fields(value)}
    else:
        attributes = getattr(value, "__dict__", None)
    if attributes is None:
        return repr(value)
    return f"{describe(type(value))}({describe(attributes)})"


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not yet assigned
        return None


_PICKLED_PAYLOAD = "_con2_weights"  # the key of a pickled detector's weights-only bytes


def portable_state(detector, state: dict) -> dict:
    """Return the state to pickle (``state``: a copy of the detector's ``__dict__``).

    A fitted detector of built-in components pickles its torch state as the bytes of
    its weights-only file: no tensor, module or device in the pickle, so it loads on any
    machine, and ``skops.io`` can save it (it stores bytes, and restoring them runs no
    code: ``torch.load(weights_only=True)``). Other detectors (a user-written context,
    backbone, objective or scorer: code that only pickle carries) pickle their objects,
    with the tensors moved to the CPU. The live object is not changed.
    """
    device = state.get("device_")
    if device is None:  # not fitted
        return state
    payload = None
    if not _problems(detector):
        with contextlib.suppress(TypeError):  # a parameter the file format cannot hold
            payload = _payload(detector)
    if payload is not None:
        buffer = _stdio.BytesIO()
        torch.save(payload, buffer)
        kept = {k: v for k, v in state.items() if k not in (*TORCH_STATE, *_IN_PAYLOAD)}
        return {**kept, "device_": str(device), _PICKLED_PAYLOAD: buffer.getvalue()}
    if device.type != "cpu":
        moved = move(tuple(state[k] for k in TORCH_STATE), "cpu")
        state.update(zip(TORCH_STATE, moved, strict=True))
    return state


def restore_state(detector, state: dict) -> None:
    """Give an unpickled ``detector`` its ``state``, the torch state on the best device here.

    A model fitted on CUDA loads on a machine without it on the CPU, with a warning.
    """
    blob = state.pop(_PICKLED_PAYLOAD, None)
    detector.__dict__.update(state)
    device = state.get("device_")
    if device is None:
        return
    detector.device_ = loadable_device(torch.device(device))
    if blob is not None:
        payload = torch.load(_stdio.BytesIO(blob), map_location="cpu", weights_only=True)
        _restore(detector, payload, json.loads(payload["fitted"]), detector.device_)
        detector.__dict__.update(state, device_=detector.device_)  # params as they were
    elif detector.device_.type != "cpu":
        moved = move(tuple(state[k] for k in TORCH_STATE), detector.device_)
        detector.__dict__.update(zip(TORCH_STATE, moved, strict=True))


def load(cls, path, device=None):
    """Read a file written by :func:`save` into a new detector of class ``cls``."""
    params, fitted, payload = read(path)
    detector = cls(**params)
    restore(detector, payload, fitted, device)
    return detector
