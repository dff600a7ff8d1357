"""``Con2Detector``: the scikit-learn estimator around the torch code."""

from __future__ import annotations

import copy
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn import get_config
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from con2 import _persistence
from con2._compat import HasMethods, Interval, StrOptions, _fit_context
from con2._distributed import resolve_group
from con2._embedding import embed_training_set, embed_views, embedding_buffer, make_test_time_views
from con2._input import TrainingIndex, scoring_batches, training_images
from con2._persistence import checkpoint_for
from con2._training import (
    EpochPlan,
    Schedule,
    fast_math,
    fit_encoder,
    place_images,
    progress_reporter,
)
from con2._utils import (
    derive_seed,
    loadable_device,
    make_generator,
    move,
    release_cuda_memory,
    resolve_device,
)
from con2.augment import SimCLRAugment
from con2.contexts import CONTEXTS, resolve_contexts, warn_if_unsuitable
from con2.networks import BACKBONES, build_encoder
from con2.scorers import SCORERS, resolve_scorer

AUTO_CONTAMINATION = 0.01  # what contamination="auto" means: a 1% false-positive target
_CHECK_SAMPLES = 256  # images check_context looks at during fit
_SCORING_CHUNK = 2048  # most images embedded and scored at once (scores do not depend on it)
_TORCH_STATE = ("encoder_", "scorer_", "contexts_", "views_")


class Con2Detector(OutlierMixin, BaseEstimator):
    """Image anomaly detector trained by contrasting contexts (Con2).

    Fit it on normal images only. Each image is seen in two contexts, itself and a context
    augmentation of it (a vertical flip, say); a ResNet learns representations that
    cluster by context (context contrasting) and match image by image across the
    clusters (content alignment). New images are scored by how well their
    representations, under a fixed set of test-time augmentations in both contexts, fit
    the training representations [1]_.

    Parameters
    ----------
    context : {"vflip", "invert", "equalize"}, ContextAugmentation, list or None, \
            default="vflip"
        The context augmentation(s). A list trains with several contexts (paper F.3).
        ``None`` trains without context: plain SimCLR instance discrimination, the
        paper's baseline. See :func:`con2.check_context` for choosing one.
    scorer : {"nnd", "lh"} or scorer object, default="nnd"
        ``"nnd"``: cosine similarity to the nearest training image
        (:class:`~con2.scorers.NearestNeighborScorer`, keeps all training embeddings).
        ``"lh"``: Gaussian log-likelihood (:class:`~con2.scorers.GaussianScorer`, keeps a
        mean and covariance per view). An object is cloned at fit, never modified.
    backbone : "resnet18" or callable, default="resnet18"
        ResNet18 from scratch (3x3 stem up to 64 px, ImageNet stem above), or a callable
        ``backbone(image_shape) -> nn.Module`` mapping (batch, C, H, W) to (batch,
        embed_dim) with an ``embed_dim`` attribute; it is called anew at every fit.
    base_width : int, default=64
        Channels of the first ResNet stage (64 is the standard ResNet18). Smaller widths
        train much faster on a CPU, at some cost in accuracy.
    image_shape : tuple of int, default=None
        ``(n_channels, height, width)`` of 2-D input rows (flattened in that order), or to
        resolve an ambiguous channel axis of 4-D input. Without it, 2-D rows are images of
        height 1.
    value_range : tuple of float, default=None
        Intensity range ``(low, high)`` of the pixel values, mapped linearly to [0, 1]:
        e.g. ``(0, 4095)`` for 12-bit x-rays. ``None`` accepts ``uint8`` (0..255) and
        floats in [0, 1] and rejects anything else.
    n_epochs : int, default=100
        Passes over the training images.
    batch_size : int, default=256
        Images per step (each gives 4 views with one context). Clipped to the number of
        training images; the last incomplete batch of an epoch is dropped.
    learning_rate : float, default=1e-3
        AdamW learning rate, annealed to 0 by a cosine schedule.
    weight_decay : float, default=1e-3
        AdamW weight decay.
    temperature : float, default=0.2
        Softmax temperature of both loss terms.
    alpha_max : float, default=1.0
        Final weight of content alignment; the weight rises linearly from 0.
    n_test_augmentations : int, default=16
        Number ``A`` of fixed test-time augmentations, split evenly over the contexts
        (the paper uses 40). Scoring cost grows linearly with it.
    contamination : "auto" or float in (0, 0.5], default="auto"
        The false-positive rate to aim for on new normal images: ``offset_`` is this
        quantile of the calibration scores (``calibration_scores_``). ``"auto"`` means
        0.01. :meth:`set_threshold` moves it later without refitting.
    device : str, default="auto"
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    compile : bool, default=False
        Train through ``torch.compile(encoder)``: a one-off compilation (tens of
        seconds), then faster steps on a GPU. The fitted ``encoder_`` is the plain module.
    distributed : "auto" or bool, default="auto"
        Train one model on several processes with ``torch.distributed`` (one device each,
        or CPU processes with gloo), as ``torchrun --nproc_per_node=N script.py`` launches
        them. ``"auto"``: when a process group of more than one process is initialised, or
        torchrun's environment says ``WORLD_SIZE > 1`` (the group is then created: NCCL on
        CUDA, gloo on CPU; on CUDA each process takes ``cuda:LOCAL_RANK``). ``True``: the
        same, also with one process, and an error outside torchrun. ``False``: one
        process. ``batch_size`` is the global batch whatever the number of processes;
        scoring never uses the group. See the README, "More than one device or machine".
    sync_batchnorm : bool, default=False
        With several GPUs (NCCL), synchronise batch-norm statistics over processes instead
        of computing them per process.
    warm_start : bool, default=False
        If fitted already, ``fit`` trains the current encoder for ``n_epochs`` more epochs
        (fresh AdamW state and cosine schedule, content weight held at ``alpha_max``) on
        images of the same shape, then refits the scorer. ``loss_curve_`` grows.
    checkpoint_path : str or path-like, default=None
        File to save the training state to every ``checkpoint_every`` epochs and at the
        end. A ``fit`` with the same data and parameters resumes from it and ends in the
        same state as an uninterrupted fit; a checkpoint of another fit is overwritten
        (with a warning).
    checkpoint_every : int, default=10
        Epochs between checkpoints.
    cache_dir : str or path-like, default=None
        Where to put, in a new folder removed when ``fit`` ends, the decoded training
        images when ``X`` names image files, and the training embeddings when the
        training images live on disk (files, ``numpy.memmap``), so that data larger
        than memory can be trained on. None: the system's temporary folder.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, augmentations and batch order. Torch's global
        random state is never touched.
    verbose : int, default=0
        0: silent. 1: a progress bar over epochs. 2: also one line per epoch.

    Attributes
    ----------
    encoder_ : con2.networks.Encoder
        The trained backbone and projection heads, on ``device_``.
    contexts_ : tuple of ContextAugmentation
        The resolved context augmentations.
    scorer_ : object
        The fitted scorer.
    views_ : TestTimeViews
        The fixed test-time augmentations.
    offset_ : float
        ``decision_function = score_samples - offset_``; set by ``contamination`` or
        :meth:`set_threshold`.
    calibration_scores_ : ndarray of shape (n_samples,), float64
        Leave-one-out scores of the training images: each scored by a scorer fitted
        without it (no image is its own nearest neighbour, nor part of its own mean and
        covariance). They set ``offset_`` and give :meth:`p_values`.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    image_shape_ : tuple of int
        ``(n_channels, height, width)`` of the training images; image files are resized
        to it when scored.
    n_samples_fit_ : int
        Number of training images.
    n_features_in_ : int
        Pixel values per image, ``prod(image_shape_)``.
    device_ : torch.device
        Where the network runs.

    See Also
    --------
    con2.check_context : Measure whether a context suits your images.

    References
    ----------
    .. [1] Ryser et al., "Two Is Better Than One: Aligned Representation Pairs for
       Anomaly Detection", 2024. https://arxiv.org/abs/2405.18848

    Examples
    --------
    >>> import numpy as np
    >>> from con2 import Con2Detector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((64, 1, 16, 16)) * np.linspace(0, 1, 16)[:, None]  # dark at the top
    >>> det = Con2Detector(base_width=4, n_epochs=2, batch_size=32, random_state=0).fit(X)
    >>> det.predict(X[:4]).shape
    (4,)
    """

    _parameter_constraints: dict = {
        "context": [StrOptions(set(CONTEXTS)), HasMethods(["__call__"]), list, tuple, None],
        "scorer": [StrOptions(set(SCORERS)), HasMethods(["fit", "score_samples"])],
        "backbone": [StrOptions(set(BACKBONES)), callable],
        "base_width": [Interval(Integral, 1, None, closed="left")],
        "image_shape": [tuple, list, None],
        "value_range": [tuple, list, None],
        "n_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "alpha_max": [Interval(Real, 0, None, closed="left")],
        "n_test_augmentations": [Interval(Integral, 1, None, closed="left")],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "device": [str],
        "compile": ["boolean"],
        "distributed": [StrOptions({"auto"}), "boolean"],
        "sync_batchnorm": ["boolean"],
        "warm_start": ["boolean"],
        "checkpoint_path": [str, os.PathLike, None],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "cache_dir": [str, os.PathLike, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        context="vflip",
        scorer="nnd",
        backbone="resnet18",
        base_width=64,
        image_shape=None,
        value_range=None,
        n_epochs=100,
        batch_size=256,
        learning_rate=1e-3,
        weight_decay=1e-3,
        temperature=0.2,
        alpha_max=1.0,
        n_test_augmentations=16,
        contamination="auto",
        device="auto",
        compile=False,
        distributed="auto",
        sync_batchnorm=False,
        warm_start=False,
        checkpoint_path=None,
        checkpoint_every=10,
        cache_dir=None,
        random_state=None,
        verbose=0,
    ):
        self.context = context
        self.scorer = scorer
        self.backbone = backbone
        self.base_width = base_width
        self.image_shape = image_shape
        self.value_range = value_range
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.alpha_max = alpha_max
        self.n_test_augmentations = n_test_augmentations
        self.contamination = contamination
        self.device = device
        self.compile = compile
        self.distributed = distributed
        self.sync_batchnorm = sync_batchnorm
        self.warm_start = warm_start
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the encoder on normal images ``X`` and fit the scorer.

        Parameters
        ----------
        X : array-like of shape (n_samples, height, width), (n_samples, n_channels, \
                height, width), (n_samples, height, width, n_channels) or \
                (n_samples, n_features); or a folder, or a list of image files
            Normal images, ``uint8`` or floats in [0, 1] (see ``value_range``). A folder
            means every image file below it, in sorted order; files are decoded as
            :mod:`con2.io` describes, and resized to ``image_shape`` when it is given
            (else they must share one size). A ``numpy.memmap`` is read in place.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : Con2Detector
        """
        with training_images(self, X) as (images, on_disk):
            self._fit(images, on_disk)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X, y=None):
        """Fit on ``X`` and label each training image; same as ``fit(X).predict(X)``.

        Reuses the training scores computed during ``fit`` (leave-one-out for ``"nnd"``).

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int
            +1 for inliers, -1 for outliers.
        """
        with training_images(self, X) as (images, on_disk):
            scores = self._fit(images, on_disk)
        return _labels(scores - self.offset_)

    def score_samples(self, X):
        """Return the normality score of each image: the higher, the more normal.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            In any form :meth:`fit` accepts: arrays with the training image shape, files
            of any size (resized to ``image_shape_``), scored a batch at a time.

        Returns
        -------
        scores : ndarray of shape (n_samples,), float64
            Mean over test-time views of the cosine similarity to the nearest training
            image (``"nnd"``) or of the Gaussian log-density (``"lh"``). With ``"nnd"``,
            a training image is scored leave-one-out (not as its own nearest neighbour).
        """
        check_is_fitted(self)
        return np.concatenate([self._score(images) for images in scoring_batches(self, X)])

    def decision_function(self, X):
        """Return ``score_samples(X) - offset_``; negative values are anomalies.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`.

        Returns
        -------
        decision : ndarray of shape (n_samples,), float64
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Label images as normal (+1) or anomalous (-1).

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int
        """
        return _labels(self.decision_function(X))

    def embed(self, X):
        """Return the L2-normalised backbone features of the images (no augmentation).

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`.

        Returns
        -------
        embeddings : ndarray of shape (n_samples, embed_dim), float32
        """
        check_is_fitted(self)
        size = self._forward_size(self.device_)
        return np.concatenate([
            embed_views(self.encoder_, images, None, size, self.device_)[0].cpu().numpy()
            for images in scoring_batches(self, X)
        ])  # fmt: skip

    def set_threshold(self, fpr):
        """Move ``offset_`` so that about ``fpr`` of new normal images are flagged.

        The new threshold flags exactly the images whose :meth:`p_values` are at most
        ``fpr``; ``predict`` and ``decision_function`` follow it. No refitting.

        Parameters
        ----------
        fpr : float in (0, 1)
            The false-positive rate to allow. With ``n`` calibration scores, rates below
            ``1 / (n + 1)`` cannot be told apart from 0 and are refused.

        Returns
        -------
        self : Con2Detector
        """
        check_is_fitted(self, "calibration_scores_")
        n = len(self.calibration_scores_)
        if not isinstance(fpr, Real) or isinstance(fpr, bool) or not 0 < fpr < 1:
            raise ValueError(f"fpr must be a number in (0, 1); got {fpr!r}.")
        if fpr < 1 / (n + 1):
            raise ValueError(
                f"fpr={fpr:g} is below 1/(n+1) = {1 / (n + 1):.3g}, the smallest rate {n} "
                "calibration scores can resolve; allow a larger rate or train on more images."
            )
        # Flag x iff p(x) <= fpr, i.e. iff fewer than k + 1 calibration scores are <= s(x),
        # i.e. iff s(x) < the (k + 1)-th smallest calibration score.
        k = int(np.floor(fpr * (n + 1) + 1e-9)) - 1
        self.offset_ = float(np.sort(self.calibration_scores_)[k])
        return self

    def p_values(self, X):
        """Conformal p-value of each image's score against the calibration scores.

        ``p = (1 + #{calibration scores <= score}) / (n + 1)``: small means unusual. If a
        new normal image and the ``n`` calibration images are exchangeable (drawn alike,
        scored alike), ``P(p <= a) <= a`` for every ``a``: flagging ``p <= a`` flags at
        most a share ``a`` of normal images, on average. The calibration scores here are
        leave-one-out scores of the training images; the encoder has seen those images,
        so exchangeability, and the guarantee, are approximate: ``benchmarks/calibration.py``
        measures how closely the promised rates hold on unseen normal images.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`.

        Returns
        -------
        p_values : ndarray of shape (n_samples,), float64, in (0, 1]
        """
        check_is_fitted(self, "calibration_scores_")
        calibration = np.sort(self.calibration_scores_)
        below = np.searchsorted(calibration, self.score_samples(X), side="right")
        return (1.0 + below) / (len(calibration) + 1.0)

    def export(self, path, format="onnx"):
        """Write the scoring path as one graph: ``uint8`` images in, verdicts out.

        The graph's input ``images`` has shape (batch_size, n_channels, height, width) at
        ``image_shape_``, any batch size, ``uint8`` (``float32`` in ``value_range`` for
        models with another range); its outputs ``score``, ``decision`` and ``label`` are
        what :meth:`score_samples`, :meth:`decision_function` and :meth:`predict` return
        for new images. Everything between is in the graph: scaling, every test-time view
        with its context, the network, the scorer, the mean and the threshold. Files must
        be decoded and resized to the image shape before (see the README). The graph
        scores every image as new: the leave-one-out treatment of training images stays
        in Python. The file's metadata holds the con2 version, parameters, image shape,
        value range, contexts, scorer, threshold and date.

        Parameters
        ----------
        path : str or path-like
        format : {"onnx", "pt2"}, default="onnx"
            ``"onnx"`` (needs ``pip install 'con2[export]'``) for ONNX Runtime and other
            runtimes; ``"pt2"`` writes the same module with ``torch.export``.
        """
        check_is_fitted(self)
        from con2.export import export

        export(self, path, format)

    def save(self, path):
        """Write the fitted detector to ``path`` in con2's weights-only format.

        Unlike joblib/pickle files, the file holds no code: :func:`con2.load` reads it
        with ``torch.load(weights_only=True)``. Only detectors built from the built-in
        contexts, backbone and scorers can be saved this way.

        Parameters
        ----------
        path : str or path-like
        """
        check_is_fitted(self)
        _persistence.save(self, path)

    def _fit(self, images, on_disk=False):
        """Train and fit the scorer; return leave-one-out training scores (float64).

        ``on_disk``: the images live in a file (memmap, decode cache); then so do the
        training embeddings, unless the scorer keeps them anyway (a memory bank).
        """
        group, device = resolve_group(self.distributed, self.device)
        device = resolve_device(device)
        contexts, scorer = self._check_training_set(images, group)
        n_samples, image_shape = images.shape[0], tuple(images.shape[1:])
        warm = self._check_warm_start(image_shape, contexts)
        previous = list(self.loss_curve_) if warm else []
        seed = (derive_seed(self.random_state) + len(previous)) % np.iinfo(np.int32).max
        if warm:
            encoder = copy.deepcopy(self.encoder_)  # the fitted one stays untouched
        else:
            encoder = build_encoder(
                self.backbone, self.base_width, image_shape, seed, bool(contexts)
            )
        plan = EpochPlan(
            images=place_images(images, device),
            contexts=contexts,
            augment=SimCLRAugment(),
            batch_size=min(self.batch_size, n_samples),
            seed=seed,
            device=device,
            group=group,
        )
        memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
        encoder = encoder.to(device, memory_format=memory_format)
        loo = getattr(scorer, "leave_one_out", False)
        spill = on_disk and not group.active and not getattr(scorer, "memory_bank", False)
        with fast_math(device):
            checkpoint = checkpoint_for(self, images, device, self.encoder_ if warm else None)
            verbose = self.verbose if group.is_main else 0  # progress from rank 0 only
            with progress_reporter(self.n_epochs, verbose) as progress:
                losses = fit_encoder(encoder, plan, self._schedule(warm), checkpoint, progress)
            views = make_test_time_views(  # drawn on the CPU: the same on every device
                self.n_test_augmentations, contexts, image_shape[1:], plan.augment,
                make_generator(seed, torch.device("cpu")),
            )  # fmt: skip
            scores = self._fit_scorer(scorer, encoder, plan, views, spill, loo)
        contamination = AUTO_CONTAMINATION if self.contamination == "auto" else self.contamination
        # Fitted state is assigned only now, so a failed fit leaves the previous state.
        self.encoder_, self.contexts_, self.scorer_, self.views_ = encoder, contexts, scorer, views
        self.image_shape_, self.device_, self.loss_curve_ = image_shape, device, previous + losses
        self.n_samples_fit_ = n_samples
        self._train_index = TrainingIndex(images) if loo else None
        self.calibration_scores_ = scores
        self.offset_ = float(np.percentile(scores, 100 * contamination))
        return scores

    def _fit_scorer(self, scorer, encoder, plan, views, spill: bool, loo: bool) -> np.ndarray:
        """Fit the scorer on every training image's views; return calibration scores.

        With several processes each embeds its shard and all gather the whole, so every
        rank fits the identical scorer. ``spill``: the embeddings go to a file.
        """
        n_samples = plan.images.shape[0]
        shape = (len(views), n_samples, encoder.backbone.embed_dim)
        with embedding_buffer(shape, spill, self.cache_dir) as out:
            embeddings = embed_training_set(
                encoder, plan, views, self._forward_size(plan.device), out
            )
            scorer.fit(embeddings)
            exclude = torch.arange(n_samples, device=plan.device) if loo else None
            return scorer.score_samples(embeddings, exclude).cpu().numpy()

    def _check_training_set(self, images, group):
        """Check the images against the settings; return contexts and a fresh scorer."""
        n_samples = images.shape[0]
        if n_samples < 2:
            raise ValueError(
                f"Con2Detector needs at least 2 training images; got n_samples={n_samples}."
            )
        if images[0].numel() < 2:
            raise ValueError(
                "Con2Detector needs images of more than one pixel; got n_features=1 "
                f"(image shape {tuple(images.shape[1:])})."
            )
        contexts = resolve_contexts(self.context)
        if self.n_test_augmentations < len(contexts) + 1:
            raise ValueError(
                f"n_test_augmentations={self.n_test_augmentations} is fewer than the "
                f"{len(contexts) + 1} contexts; each context needs at least one view."
            )
        if min(self.batch_size, n_samples) < group.world_size:
            raise ValueError(
                f"batch_size={self.batch_size} (with {n_samples} images) is smaller than "
                f"the {group.world_size} processes sharing each batch; every process needs "
                "at least one image per step."
            )
        if self.sync_batchnorm and not (group.active and torch.distributed.get_backend() == "nccl"):
            raise ValueError(
                "sync_batchnorm=True synchronises batch-norm statistics between GPUs and needs "
                "a distributed fit with the NCCL backend (torchrun on CUDA devices); this fit "
                + ("uses gloo on the CPU." if group.active else "runs in a single process.")
            )
        if group.is_main:
            warn_if_unsuitable(images, contexts, max_samples=_CHECK_SAMPLES)
        return contexts, resolve_scorer(self.scorer)

    def _check_warm_start(self, image_shape, contexts) -> bool:
        """Whether this fit continues the fitted encoder (``warm_start``)."""
        if not (self.warm_start and hasattr(self, "encoder_")):
            return False
        if image_shape != self.image_shape_ or len(contexts) != len(self.contexts_):
            raise ValueError(
                f"warm_start continues a model fitted on images of shape {self.image_shape_} "
                f"with {len(self.contexts_)} context(s); got {image_shape} and "
                f"{len(contexts)}. Set warm_start=False to train a new model."
            )
        return True

    def _schedule(self, warm: bool) -> Schedule:
        return Schedule(
            n_epochs=self.n_epochs, learning_rate=self.learning_rate,
            weight_decay=self.weight_decay, temperature=self.temperature,
            alpha_max=self.alpha_max, warm=warm, compile=self.compile,
            sync_batchnorm=self.sync_batchnorm,
        )  # fmt: skip

    def _score(self, images) -> np.ndarray:
        exclude = None if self._train_index is None else self._train_index.lookup(images)
        # Images per scorer call: their embeddings fit in scikit-learn's working_memory,
        # and at most _SCORING_CHUNK of them, so memory does not grow with the data.
        megabytes = get_config()["working_memory"]
        per_image = 4 * len(self.views_) * self._embed_dim()
        chunk = max(1, min(_SCORING_CHUNK, megabytes * 2**20 // per_image))
        forward = self._forward_size(self.device_)
        scores, start = [], 0
        while start < images.shape[0]:
            part = None if exclude is None else exclude[start : start + chunk]
            try:
                z = embed_views(self.encoder_, images[start : start + chunk], self.views_,
                                forward, self.device_)  # fmt: skip
                scores.append(self.scorer_.score_samples(z, part).cpu())
            except torch.cuda.OutOfMemoryError:
                if chunk == 1 and forward == 1:
                    raise
                # Fewer images per chunk first (results unchanged); then smaller passes.
                if chunk * len(self.views_) > forward:
                    chunk = max(1, chunk // 2)
                else:
                    chunk, forward = max(1, chunk // 2), max(1, forward // 2)
                release_cuda_memory()
                warnings.warn(
                    f"CUDA ran out of memory while scoring; retrying with {chunk} images "
                    f"per chunk and {forward} views per forward pass.",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            start += chunk
        return torch.cat(scores).numpy().astype(np.float64, copy=False)

    def _forward_size(self, device) -> int:
        """Return the number of views per forward pass when embedding.

        Small on the CPU, where throughput hardly depends on batch size; large on CUDA.
        """
        return 32 if device.type == "cpu" else 4 * self.batch_size

    def _embed_dim(self) -> int:
        return self.encoder_.backbone.embed_dim

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        # CUDA kernels (cuDNN convolutions, atomics) are not bitwise reproducible.
        tags.non_deterministic = self.device != "cpu" and torch.cuda.is_available()
        return tags

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: never alter the live object
        if state.get("device_") is not None and state["device_"].type != "cpu":
            moved = move(tuple(state[k] for k in _TORCH_STATE), "cpu")
            state.update(zip(_TORCH_STATE, moved, strict=True))
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        device = state.get("device_")
        if device is not None:
            self.device_ = loadable_device(device)
            if self.device_.type != "cpu":
                moved = move(tuple(state[k] for k in _TORCH_STATE), self.device_)
                self.__dict__.update(zip(_TORCH_STATE, moved, strict=True))


def _labels(decision: np.ndarray) -> np.ndarray:
    labels = np.ones_like(decision, dtype=int)
    labels[decision < 0] = -1
    return labels


def load(path, device=None) -> Con2Detector:
    """Read a detector written by :meth:`Con2Detector.save`.

    The file is read with ``torch.load(weights_only=True)``: it cannot run code.

    Parameters
    ----------
    path : str or path-like
        The file.
    device : str, default=None
        Where to run the detector, as the ``device`` parameter of ``Con2Detector``
        (``"auto"``, ``"cpu"``, ``"cuda"``; an unavailable CUDA device is an error). None
        means the device it was fitted on, or the CPU (with a warning) when that device
        is missing here.

    Returns
    -------
    detector : Con2Detector
    """
    params, fitted, payload = _persistence.read(path)
    detector = Con2Detector(**params)
    _persistence.restore(detector, payload, fitted, device)
    return detector
