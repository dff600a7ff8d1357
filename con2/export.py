"""One module from images to verdicts, exported as one ONNX (or ``torch.export``) graph.

:class:`ScoringModule` holds a fitted detector's whole scoring path: scaling the pixels
to [0, 1], every fixed test-time view in its context, the backbone, the scorer (memory
bank or Gaussian statistics, through the same head modules ``score_samples`` uses), the
mean over views and the threshold. Its single input is a batch of images at the model's
image shape, any batch size; its outputs are ``score`` (as ``score_samples``),
``decision`` (as ``decision_function``) and ``label`` (+1 / -1, as ``predict``).

What stays outside the graph: reading and resizing files to the model's image shape
(:mod:`con2.io`), and the leave-one-out treatment of training images: an exported graph
scores every image as new.

ONNX export needs the ``export`` extra: ``pip install "con2[export]"`` (onnx, onnxscript,
onnxruntime); ``import con2`` never needs it.
"""

from __future__ import annotations

import contextlib
import io as _stdio
import json
import logging
import os
import warnings
from dataclasses import fields
from datetime import datetime, timezone

import torch
from torch import Tensor, nn

from con2._embedding import TestTimeViews
from con2._input import check_value_range
from con2._utils import move
from con2._version import __version__
from con2.augment import AugmentParams

__all__ = ["FORMATS", "ScoringModule", "export", "metadata", "read_metadata"]

FORMATS = ("onnx", "pt2")
_OUTPUTS = ("score", "decision", "label")


class ScoringModule(nn.Module):
    """A fitted detector's scoring path as one module: images -> (score, decision, label).

    Parameters
    ----------
    encoder : Encoder
        The trained encoder: its backbone (features L2-normalised here) and, for scorers
        of head outputs, its heads.
    views : TestTimeViews
        The fixed test-time views; their parameters become buffers.
    head : nn.Module
        The scorer's head (``scorer.head()``), mapping embeddings of shape (n_views,
        n_samples, embed_dim) to float64 scores.
    offset : float
        The threshold: ``decision = score - offset``.
    value_range : tuple of float or None
        None or ``(0, 255)``: the input is ``uint8``. Otherwise ``float32`` raw values in
        that range.
    feature_heads : tuple of str or None
        The scorer's ``heads`` (None: backbone features).
    """

    def __init__(self, encoder, views: TestTimeViews, head, offset: float, value_range=None,
                 feature_heads=None):  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.feature_heads = feature_heads
        self.contexts, self.augment = views.contexts, views.augment
        for field in fields(AugmentParams):
            self.register_buffer(f"view_{field.name}", getattr(views.params, field.name),
                                 persistent=False)  # fmt: skip
        self.register_buffer("view_contexts", views.view_contexts, persistent=False)
        self.head = head
        self.register_buffer("offset", torch.tensor(float(offset), dtype=torch.float64))
        self.value_range = value_range

    @property
    def input_dtype(self) -> torch.dtype:
        """``uint8`` for 8-bit models, else ``float32`` raw values in ``value_range``."""
        return _input_dtype(self.value_range)

    def views(self) -> TestTimeViews:
        """Return the test-time views, built on this module's buffers (and device)."""
        params = AugmentParams(
            **{f.name: getattr(self, f"view_{f.name}") for f in fields(AugmentParams)}
        )
        return TestTimeViews(self.contexts, self.augment, params, self.view_contexts)

    def score_unit(self, x: Tensor) -> Tensor:
        """Score images of floats in [0, 1], shape (batch_size, C, H, W): float64 scores.

        Differentiable in ``x`` (except through a histogram-equalize context): the
        gradient-based anomaly maps (:mod:`con2.maps`) differentiate it.
        """
        views = self.views().apply(x)  # (n_views * batch_size, ...), view-major
        z = self.encoder.features(views, self.feature_heads)
        return self.head(z.view(len(self.view_contexts), x.shape[0], -1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Score ``images`` of shape (batch_size, n_channels, height, width).

        Returns ``score`` and ``decision`` (float64) and ``label`` (int64, +1 or -1).
        """
        if self.input_dtype == torch.uint8:
            x = images.to(torch.float32) / 255.0
        else:
            low, high = self.value_range
            x = (images.to(torch.float32) - low) / (high - low)
        score = self.score_unit(x)
        decision = score - self.offset
        label = torch.where(decision < 0, -1, 1)
        return score, decision, label


def _input_dtype(value_range) -> torch.dtype:
    """Return the exported input's dtype for a validated ``value_range`` (8-bit: uint8)."""
    return torch.uint8 if value_range in (None, (0.0, 255.0)) else torch.float32


def scoring_module(detector, device="cpu", purpose="exported") -> ScoringModule:
    """Build the :class:`ScoringModule` of a fitted detector, on ``device``.

    ``purpose`` completes the error for a scorer without a ``head()`` module: "its model
    cannot be {purpose}".
    """
    if not hasattr(detector.scorer_, "head"):
        raise TypeError(
            f"The scorer {detector.scorer_!r} has no head() module, so its model cannot be "
            f"{purpose}; the built-in scorers ('nnd', 'lh', 'csi') have one."
        )
    encoder, views, head = detector.encoder_, detector.views_, detector.scorer_.head()
    if torch.device(device) != detector.device_:
        encoder, head = move((encoder, head), device)
    value_range = check_value_range(detector.value_range)
    module = ScoringModule(encoder, views.to(torch.device(device)), head, detector.offset_,
                           value_range, getattr(detector.scorer_, "heads", None))  # fmt: skip
    return module.eval()


def metadata(detector) -> dict:
    """Describe the model for the metadata of an exported file (strings: ONNX holds text)."""
    from con2._persistence import _name, _plain
    from con2.contexts import CONTEXTS
    from con2.scorers import SCORERS

    params = {}
    for key, value in detector.get_params(deep=False).items():
        try:
            params[key] = _plain(key, value)
        except TypeError:
            params[key] = repr(value)
    params["scorer"] = _name(SCORERS, detector.scorer_) or repr(detector.scorer_)
    contexts = [_name(CONTEXTS, c) or repr(c) for c in detector.contexts_]
    module_dtype = str(_input_dtype(check_value_range(detector.value_range))).split(".")[-1]
    return {
        "con2_version": __version__,
        "parameters": json.dumps(params),
        "image_shape": json.dumps(list(detector.image_shape_)),
        "input_dtype": module_dtype,
        "value_range": json.dumps(_plain("value_range", detector.value_range)),
        "contexts": json.dumps(contexts),
        "scorer": params["scorer"],
        "threshold": repr(float(detector.offset_)),
        "n_samples_fit": str(getattr(detector, "n_samples_fit_", None)),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export(detector, path, format="onnx") -> None:
    """Write ``detector``'s scoring path to ``path`` as ONNX or a ``torch.export`` program."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}.")
    module = scoring_module(detector, "cpu")
    example = torch.zeros((2, *detector.image_shape_), dtype=module.input_dtype)
    batch = torch.export.Dim("batch", min=1)
    info = metadata(detector)
    with torch.no_grad(), _quiet():
        if format == "pt2":
            program = torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})
            torch.export.save(program, path, extra_files={"con2.json": json.dumps(info)})
            return
        onnx = _require("onnx")
        _require("onnxscript")
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, input_names=["images"],
            output_names=list(_OUTPUTS), dynamic_shapes={"images": {0: batch}},
            verbose=False, external_data=False,
        )  # fmt: skip
    model = onnx.load(str(path))
    for key, value in info.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"con2.{key}", value
    onnx.save(model, str(path))


def read_metadata(path) -> dict:
    """Return the con2 metadata of an exported ``.onnx`` or ``.pt2`` file."""
    path = os.fspath(path)
    if path.endswith(".pt2"):
        extra = {"con2.json": ""}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra["con2.json"])
    ort = _require("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    found = session.get_modelmeta().custom_metadata_map
    return {k.removeprefix("con2."): v for k, v in found.items() if k.startswith("con2.")}


def _require(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(
            f"Exporting to ONNX needs {name}: pip install 'con2[export]' (onnx, onnxscript, "
            "onnxruntime)."
        ) from None


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and advisory warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_stdio.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
