"""Training objectives: what the encoder learns from a batch of views.

An objective says which projection heads it needs on top of the backbone and computes
the loss of one batch of views. The training loop, the views, the distributed gather,
the checkpoints and the scorers are the same for every objective.

**Views.** Every step draws two random views (the SimCLR family T) of every image in
every context: the image itself (context 0), each context augmentation of it (contexts
1..K), then each of the objective's own ``transforms`` (CSI's shifted copies, FIRM's
synthetic outliers: rotations). Each view carries a *context label* and an *instance
label* (which image it comes from; unique over the whole global batch, also when several
processes share it). The same contexts make the test-time views, so rotations are
test-time views like the others.

**The protocol.** :meth:`Objective.heads` builds the heads for features of size
``embed_dim`` and ``n_contexts`` context augmentations; :meth:`Objective.loss` maps the
heads' projections of a batch of views (one tensor per head, every row L2-normalised),
their labels and the training progress (0 at the first step, 1 at the last; held at 1
when a fitted model trains further) to a 0-d tensor. Under ``torch.distributed`` the
projections are every process's views, gathered, and ``anchors`` names this process's
rows: the loss is then the sum of these anchors' terms divided by the number of views,
so that the terms of all processes add up to the single-process loss.

Built-in objectives (:data:`OBJECTIVES`):

- ``"con2"``: :class:`Con2Objective`, context contrasting plus content alignment [1]_;
- ``"simclr"``: :class:`SimCLRObjective`, instance discrimination [2]_ (the paper's
  SimCLR baseline, Con2 without a context);
- ``"csi"``: :class:`CSIObjective`, contrasting shifted instances [3]_;
- ``"firm"``: :class:`FIRMObjective`, focused in-distribution representation modelling
  [4]_.

Every objective trains with the same views, augmentation family, optimiser and backbone
(one pipeline, so that they compare at equal budget); where the papers' own code
differs (its optimiser, its heads, its augmentations), the class docstring says so.

References
----------
.. [1] Ryser et al., "Two Is Better Than One: Aligned Representation Pairs for Anomaly
   Detection", 2024, section 2.2 and appendix B.1. https://arxiv.org/abs/2405.18848
.. [2] Chen et al., "A Simple Framework for Contrastive Learning of Visual
   Representations", ICML 2020. https://arxiv.org/abs/2002.05709
.. [3] Tack et al., "CSI: Novelty Detection via Contrastive Learning on Distributionally
   Shifted Instances", NeurIPS 2020. https://arxiv.org/abs/2007.08176
.. [4] Lunardi, Banabila, Herzalla and Andreoni, "Contrastive Representation Modeling
   for Anomaly Detection" (first posted as "Learning In-Distribution Representations
   for Anomaly Detection"), ECAI 2025. https://arxiv.org/abs/2501.05130
"""

from __future__ import annotations

from numbers import Real
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, clone
from torch import Tensor, nn

from con2._compat import Interval
from con2.contexts import Rotate90, Rotate180, Rotate270, VerticalFlip, resolve_contexts
from con2.losses import supcon_loss
from con2.networks import ProjectionHead

__all__ = [
    "OBJECTIVES",
    "CSIObjective",
    "Con2Objective",
    "FIRMObjective",
    "Objective",
    "SimCLRObjective",
    "resolve_objective",
]

DEFAULT_TEMPERATURE = 0.2  # Con2Detector's defaults of the settings named objectives take
DEFAULT_ALPHA_MAX = 1.0


@runtime_checkable
class Objective(Protocol):
    """What the encoder is trained to do: heads on the backbone and a loss of their outputs.

    ``uses_contexts`` (optional class attribute, default True) says whether the loss
    accepts the detector's context augmentations; an objective that does not is refused
    with one. ``transforms`` (optional, default ``()``) are the objective's own context
    augmentations, appended to the detector's (the labels after theirs).
    """

    def heads(self, embed_dim: int, n_contexts: int) -> dict[str, nn.Module]:
        """Build fresh projection heads, by name, for features of size ``embed_dim``."""

    def loss(
        self,
        projections: dict[str, Tensor],
        contexts: Tensor,
        instances: Tensor,
        progress: float,
        anchors: slice | None = None,
    ) -> Tensor:
        """Return the 0-d loss of one batch of views (see the module docstring)."""


class Con2Objective(BaseEstimator):
    """Context contrasting plus ``alpha`` times content alignment (Con2).

    With cosine similarities ``s`` between projected views, temperature ``tau`` and
    ``l(i, j) = -log(exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau))``, both terms are
    supervised contrastive losses (:func:`con2.losses.supcon_loss`), each the mean over
    anchors ``i`` of the mean of ``l(i, j)`` over the positives ``j`` of ``i``:

    - ``"context"`` (head phi): the positives of a view share its context label;
    - ``"content"`` (head psi): the positives are the other views of the same image, in
      every context.

    ``L = L_context + alpha * L_content``, with ``alpha`` rising linearly from 0 to
    ``alpha_max`` over training. The paper's sums differ from these means by constant
    factors, which ``alpha`` absorbs. Without a context augmentation (and without
    ``outliers``) there is one context: the head phi is not built and the loss is
    ``L_content`` alone (SimCLR's instance discrimination, as :class:`SimCLRObjective`).

    ``outliers`` (not in the paper: FIRM's synthetic outliers added to Con2) are
    transforms whose views are neither a context nor the image: in both terms a view of
    an outlier transform has one positive, its own other draw, and is a negative of every
    other view. They are the objective's ``transforms``: their views come after the
    detector's contexts, train the encoder and are test-time views like the others. A
    rotation by 180 degrees is a vertical flip composed with a horizontal one, which the
    augmentations already apply: it is no outlier beside the ``"vflip"`` context.

    Parameters
    ----------
    temperature : float, default=0.2
        Softmax temperature ``tau`` of both terms.
    alpha_max : float, default=1.0
        Final weight of content alignment.
    outliers : str, ContextAugmentation, list of them or None, default=None
        Transforms whose views are synthetic outliers (names of
        :data:`con2.contexts.CONTEXTS` or objects), e.g. ``["rot90", "rot270"]``.

    References
    ----------
    Ryser et al., "Two Is Better Than One: Aligned Representation Pairs for Anomaly
    Detection", 2024. https://arxiv.org/abs/2405.18848

    Lunardi et al., "Contrastive Representation Modeling for Anomaly Detection", ECAI
    2025 (the synthetic outliers). https://arxiv.org/abs/2501.05130

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> objective = Con2Objective(temperature=0.2)
    >>> z = F.normalize(torch.randn(8, 16), dim=1)  # 2 images x 2 contexts x 2 views
    >>> contexts = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    >>> instances = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    >>> sorted(objective.terms({"context": z, "content": z}, contexts, instances))
    ['content', 'context']
    >>> objective.loss({"context": z, "content": z}, contexts, instances, 0.5).shape
    torch.Size([])
    """

    uses_contexts = True

    _parameter_constraints: dict = {
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "alpha_max": [Interval(Real, 0, None, closed="left")],
        "outliers": "no_validation",  # resolve_contexts says what is wrong
    }

    def __init__(self, *, temperature=DEFAULT_TEMPERATURE, alpha_max=DEFAULT_ALPHA_MAX,
                 outliers=None):  # fmt: skip
        self.temperature = temperature
        self.alpha_max = alpha_max
        self.outliers = outliers

    @property
    def transforms(self) -> tuple:
        """The ``outliers``, resolved: context augmentations after the detector's."""
        return resolve_contexts(self.outliers)

    def heads(self, embed_dim: int, n_contexts: int) -> dict[str, nn.Module]:
        """Head phi (``"context"``, with a context augmentation or outliers) and head psi."""
        self._validate_params()
        resolve_contexts(self.outliers)  # an unknown outlier is refused before training
        context = {"context": ProjectionHead(embed_dim)} if n_contexts else {}
        return {**context, "content": ProjectionHead(embed_dim)}  # phi first: its weights first

    def terms(self, projections, contexts, instances, anchors=None) -> dict[str, Tensor]:
        """Return the unweighted terms by name: ``"context"`` (if phi exists) and ``"content"``."""
        context_labels, content_labels = self._labels(contexts, instances)
        found = {"content": supcon_loss(projections["content"], content_labels,
                                        self.temperature, anchors)}  # fmt: skip
        if "context" in projections:
            found["context"] = supcon_loss(projections["context"], context_labels,
                                           self.temperature, anchors)  # fmt: skip
        return found

    def _labels(self, contexts: Tensor, instances: Tensor) -> tuple[Tensor, Tensor]:
        """Labels of the context and content terms: an outlier view's own label per term.

        A view of outlier ``o`` (of ``n_outliers``, the last context labels) of image
        ``i`` gets ``n_views // 2 + o * stride + i`` in both terms, with ``stride =
        n_views // (2 * (n_outliers + 1))``: no lower than the number of images (every
        image is seen twice in at least ``n_outliers + 1`` contexts), so the labels are
        distinct, above every context and image label and below ``n_views``, as
        :func:`con2.losses.supcon_loss` needs, without asking the device how many
        contexts there are.
        """
        outliers = self.outliers  # counted, not resolved: this runs every step
        n_outliers = (
            0 if outliers is None else len(outliers) if isinstance(outliers, list | tuple) else 1
        )
        if not n_outliers:
            return contexts, instances
        n_views = len(contexts)
        first = contexts.max() - (n_outliers - 1)  # the first outlier's context label
        outlier = contexts >= first
        stride = n_views // (2 * (n_outliers + 1))
        own = n_views // 2 + (contexts - first) * stride + instances
        return torch.where(outlier, own, contexts), torch.where(outlier, own, instances)

    def loss(self, projections, contexts, instances, progress, anchors=None) -> Tensor:
        """``L_context + alpha_max * progress * L_content``, or ``L_content`` without phi."""
        terms = self.terms(projections, contexts, instances, anchors)
        if "context" not in terms:
            return terms["content"]
        return terms["context"] + self.alpha_max * progress * terms["content"]


class SimCLRObjective(BaseEstimator):
    """Instance discrimination (SimCLR's NT-Xent): the two views of an image are positives.

    With two views per image, ``l(i, j)`` (see :class:`Con2Objective`) over the one
    positive ``j`` of each anchor ``i``, averaged over anchors. Trained without a context
    augmentation: it is the paper's SimCLR baseline, scored by the same scorers.

    Parameters
    ----------
    temperature : float, default=0.2
        Softmax temperature.

    References
    ----------
    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020. https://arxiv.org/abs/2002.05709

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> z = F.normalize(torch.randn(4, 16), dim=1)  # 2 images x 2 views
    >>> instances = torch.tensor([0, 1, 0, 1])
    >>> SimCLRObjective().loss({"content": z}, torch.zeros(4), instances, 0.0).shape
    torch.Size([])
    """

    uses_contexts = False

    _parameter_constraints: dict = {
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, temperature=DEFAULT_TEMPERATURE):
        self.temperature = temperature

    def heads(self, embed_dim: int, n_contexts: int) -> dict[str, nn.Module]:
        """One projection head, ``"content"``."""
        self._validate_params()
        return {"content": ProjectionHead(embed_dim)}

    def terms(self, projections, contexts, instances, anchors=None) -> dict[str, Tensor]:
        """Return the one term, ``"content"``."""
        return {"content": supcon_loss(projections["content"], instances, self.temperature,
                                       anchors)}  # fmt: skip

    def loss(self, projections, contexts, instances, progress, anchors=None) -> Tensor:
        """Instance discrimination over all views; ``contexts`` and ``progress`` unused."""
        return self.terms(projections, contexts, instances, anchors)["content"]


ROTATIONS = (Rotate90(), Rotate180(), Rotate270())


def _full_precision(t: Tensor) -> Tensor:
    """Half-precision projections (under autocast) in float32; others as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class CSIObjective(BaseEstimator):
    """Contrasting shifted instances (CSI): rotations are other instances; a head names them.

    Each image is seen at four rotations (0, 90, 180 and 270 degrees: the
    ``transforms``), two views each. The loss is NT-Xent over all views at temperature
    ``temperature``, the only positive of a view being the same image at the same
    rotation in the other draw (other rotations of the image are negatives), plus
    ``rotation_weight`` times the cross-entropy of a linear 4-way rotation head on the
    backbone features. The projection head returns unnormalised projections (the loss
    normalises them), because CSI's score weighs cosines by their norm
    (:class:`con2.scorers.CSIScorer`).

    Departures from the authors' code, for one pipeline: AdamW and our augmentation family
    instead of LARS and theirs; the two-layer projection head of the other objectives.

    Parameters
    ----------
    temperature : float, default=0.5
        NT-Xent temperature (CSI's value).
    rotation_weight : float, default=1.0
        Weight of the rotation cross-entropy (CSI's value).

    References
    ----------
    Tack et al., "CSI: Novelty Detection via Contrastive Learning on Distributionally
    Shifted Instances", NeurIPS 2020. https://arxiv.org/abs/2007.08176

    Examples
    --------
    >>> import torch
    >>> objective = CSIObjective()
    >>> heads = objective.heads(16, 3)
    >>> contexts = torch.arange(4).repeat_interleave(2).repeat(2)  # 2 images, 4 rotations
    >>> instances = torch.arange(2).repeat(8)
    >>> h = torch.randn(16, 16)
    >>> sorted(objective.terms({k: m(h) for k, m in heads.items()}, contexts, instances))
    ['contrastive', 'rotation']
    """

    uses_contexts = False
    transforms = ROTATIONS

    _parameter_constraints: dict = {
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "rotation_weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, *, temperature=0.5, rotation_weight=1.0):
        self.temperature = temperature
        self.rotation_weight = rotation_weight

    def heads(self, embed_dim: int, n_contexts: int) -> dict[str, nn.Module]:
        """Build an unnormalised projection head (``"content"``) and a linear rotation head."""
        self._validate_params()
        return {"content": ProjectionHead(embed_dim, normalize=False),
                "rotation": nn.Linear(embed_dim, n_contexts + 1)}  # fmt: skip

    def terms(self, projections, contexts, instances, anchors=None) -> dict[str, Tensor]:
        """Return ``"contrastive"`` (NT-Xent) and ``"rotation"`` (cross-entropy)."""
        z = F.normalize(_full_precision(projections["content"]), dim=1)
        # one label per (image, rotation): below n_views, as supcon_loss needs
        pairs = instances * (len(self.transforms) + 1) + contexts
        anchors_ = anchors if anchors is not None else slice(0, len(z))
        logits = _full_precision(projections["rotation"][anchors_])
        rotation = F.cross_entropy(logits, contexts[anchors_], reduction="sum") / len(z)
        return {"contrastive": supcon_loss(z, pairs, self.temperature, anchors),
                "rotation": rotation}  # fmt: skip

    def loss(self, projections, contexts, instances, progress, anchors=None) -> Tensor:
        """``NT-Xent + rotation_weight * cross-entropy``; ``progress`` unused."""
        terms = self.terms(projections, contexts, instances, anchors)
        return terms["contrastive"] + self.rotation_weight * terms["rotation"]


class FIRMObjective(BaseEstimator):
    """FIRM: normal views are all positives of each other; rotated copies are outliers.

    Each image is seen as itself and at three rotations (90, 180 and 270 degrees, the
    ``transforms``: synthetic outliers, three quarters of the views), two views each. A
    supervised contrastive loss at temperature ``temperature`` on the projections: every
    view of a normal (unrotated) image has all other normal views as positives, every
    rotated view only its own other draw; every other view is in the denominator.

    Departures from the authors' code, for one pipeline: this is their concatenated
    layout (``FIRMLossv2``: all views contrast with all), while their paper's runs use a
    pairwise layout of the first draw against the second; AdamW and our augmentation
    family; our two-layer projection head (theirs has eight layers with batch norm).
    Their published results pick, per class, the checkpoint with the best test AUROC and
    train 2000 epochs; ours are one fit scored once.

    Parameters
    ----------
    temperature : float, default=0.2
        Softmax temperature (FIRM's value).

    References
    ----------
    Lunardi et al., "Contrastive Representation Modeling for Anomaly Detection" (first
    posted as "Learning In-Distribution Representations for Anomaly Detection"), ECAI
    2025. https://arxiv.org/abs/2501.05130

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> contexts = torch.arange(4).repeat_interleave(2).repeat(2)  # 2 images, 4 rotations
    >>> instances = torch.arange(2).repeat(8)
    >>> z = F.normalize(torch.randn(16, 8), dim=1)
    >>> FIRMObjective().loss({"content": z}, contexts, instances, 0.0).shape
    torch.Size([])
    """

    uses_contexts = False
    transforms = ROTATIONS

    _parameter_constraints: dict = {
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, temperature=0.2):
        self.temperature = temperature

    def heads(self, embed_dim: int, n_contexts: int) -> dict[str, nn.Module]:
        """One projection head, ``"content"``."""
        self._validate_params()
        return {"content": ProjectionHead(embed_dim)}

    def terms(self, projections, contexts, instances, anchors=None) -> dict[str, Tensor]:
        """Return the one term, ``"content"``."""
        z = projections["content"]
        n_images = len(z) // (2 * (len(self.transforms) + 1))
        # normal views share label 0; a rotated view's label is its (rotation, image)
        labels = torch.where(contexts == 0, 0, contexts * n_images + instances)
        return {"content": supcon_loss(z, labels, self.temperature, anchors)}

    def loss(self, projections, contexts, instances, progress, anchors=None) -> Tensor:
        """Return the supervised contrastive loss above; ``progress`` is unused."""
        return self.terms(projections, contexts, instances, anchors)["content"]


OBJECTIVES: dict[str, type] = {
    "con2": Con2Objective,
    "simclr": SimCLRObjective,
    "csi": CSIObjective,
    "firm": FIRMObjective,
}


def resolve_objective(objective, temperature=DEFAULT_TEMPERATURE,
                      alpha_max=DEFAULT_ALPHA_MAX):  # fmt: skip
    """Return a fresh objective for the ``objective`` parameter of a detector.

    A name builds the built-in objective with the detector's ``temperature`` and, where
    it has one, ``alpha_max``. An object is cloned; it carries its own settings, so a
    detector ``temperature`` or ``alpha_max`` other than the default is refused rather
    than silently ignored.
    """
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)} or pass "
                "an object with heads(embed_dim, n_contexts) and loss(projections, contexts, "
                "instances, progress, anchors=None)."
            )
        cls = OBJECTIVES[objective]
        settings = {"temperature": temperature, "alpha_max": alpha_max}
        accepted = cls().get_params() if issubclass(cls, BaseEstimator) else settings
        return cls(**{k: v for k, v in settings.items() if k in accepted})
    if isinstance(objective, Objective) and not isinstance(objective, type):
        changed = [f"{name}={value!r}" for name, value, default in (
            ("temperature", temperature, DEFAULT_TEMPERATURE),
            ("alpha_max", alpha_max, DEFAULT_ALPHA_MAX)) if value != default]  # fmt: skip
        if changed:
            raise ValueError(
                f"{', '.join(changed)} configures objectives given by name; the objective "
                f"object {objective!r} carries its own settings. Set them on it instead."
            )
        return clone(objective, safe=False)
    raise TypeError(
        "objective must be a name in con2.objectives.OBJECTIVES or an object with "
        f"heads(embed_dim, n_contexts) and loss(...); got {objective!r}."
    )


def objective_contexts(objective, contexts: tuple) -> tuple:
    """Return every context of a fit: the detector's, then the objective's ``transforms``.

    Refuses the detector's context augmentations for an objective without a context
    term (they would only multiply the views).
    """
    if contexts and not getattr(objective, "uses_contexts", True):
        raise ValueError(
            f"The objective {objective!r} has no context term, so a context augmentation "
            "would only multiply the views; pass context=None (or use objective='con2')."
        )
    transforms = tuple(getattr(objective, "transforms", ()))
    # a transform that is also a context, or a vertical flip beside a rotation by 180
    # degrees (the same image up to a horizontal flip, which the augmentations apply)
    kinds = {type(c) for c in contexts}
    same = [t for t in transforms if type(t) in kinds or _TWINS.get(type(t)) in kinds]
    if same:
        raise ValueError(
            f"The objective {objective!r} treats {same[0]!r} as an outlier, which the "
            f"contexts {contexts!r} make a context (a vertical flip is a rotation by 180 "
            "degrees up to the augmentations' horizontal flip); leave it out of one of them."
        )
    return (*contexts, *transforms)


_TWINS = {VerticalFlip: Rotate180, Rotate180: VerticalFlip}
