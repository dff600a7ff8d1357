"""``Con2Detector``: the scikit-learn face of the method.

The class holds the documentation, the parameter constraints, ``__init__`` and thin
public methods; fitting and scoring happen in :mod:`con2._engine`, thresholds and
p-values in :mod:`con2._calibration`, files and pickling in :mod:`con2._persistence`.
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from con2 import _calibration, _engine, _persistence
from con2._compat import Interval, StrOptions, _fit_context


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
    context : {"vflip", "invert", "equalize", "rot90", "rot180", "rot270"}, \
            ContextAugmentation, list or None, default="vflip"
        The context augmentation(s). A list trains with several contexts (paper F.3).
        ``None`` trains without context: with the Con2 objective, plain instance
        discrimination (the paper's SimCLR baseline). See :func:`con2.check_context`
        for choosing one.
    scorer : {"nnd", "lh", "csi"} or scorer object, default="nnd"
        ``"nnd"``: cosine similarity to the nearest training image
        (:class:`~con2.scorers.NearestNeighborScorer`, keeps all training embeddings;
        ``NearestNeighborScorer(n_neighbors=5)`` is FIRM's score). ``"lh"``: Gaussian
        log-likelihood (:class:`~con2.scorers.GaussianScorer`, keeps a mean and
        covariance per view). ``"csi"``: CSI's own score, for ``objective="csi"``
        (:class:`~con2.scorers.CSIScorer`). An object is cloned at fit, never modified.
    objective : {"con2", "simclr", "csi", "firm"} or objective object, default="con2"
        What the encoder is trained to do (:mod:`con2.objectives`). ``"con2"``:
        context contrasting plus content alignment (:class:`~con2.objectives.Con2Objective`).
        ``"simclr"``: instance discrimination. ``"csi"`` and ``"firm"``: rotated copies as
        shifted instances or synthetic outliers, which are also test-time views. The last
        three have no context term and need ``context=None``. An object with ``heads`` and
        ``loss`` methods is cloned at fit, never modified.
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
        Softmax temperature of the objective's loss terms (objectives given by name; an
        objective object carries its own).
    alpha_max : float, default=1.0
        Final weight of content alignment; the weight rises linearly from 0 (the
        ``"con2"`` objective).
    n_test_augmentations : int, default=16
        Number ``A`` of fixed test-time augmentations, split evenly over the contexts
        (the paper uses 40). Scoring cost grows linearly with it.
    contamination : "auto" or float in (0, 0.5], default="auto"
        The false-positive rate to aim for on new normal images: ``offset_`` is this
        quantile of the calibration scores (``calibration_scores_``). ``"auto"`` means
        0.01. :meth:`set_threshold` moves it later without refitting.
    device : str, default="auto"
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Arithmetic of training's forward and backward passes (autocast: weights,
        optimiser state and the loss stay float32, and scoring is float32 whatever this
        says). ``"auto"``: bfloat16 on CUDA and on CPUs that compute it in hardware
        (AVX512-BF16, AMX or ARM BF16), float32 elsewhere, by that fixed rule and never
        by timing. bfloat16 on a CPU without hardware support is slower and warns.
        On the CPU, an encoder with a strided convolution over maps one pixel wide
        (ResNet18 on images under 5 pixels wide) trains in float32 under ``"auto"``
        and refuses ``"bfloat16"``: the CPU's bfloat16 gradient of such a convolution
        is garbage on some CPUs. ``precision_`` says which a fit used.
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
        (with a warning), a file that is not a checkpoint is refused.
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
    objective_ : object
        The objective the encoder was trained with.
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
    epoch_seconds_ : list of float
        Wall-clock seconds of each epoch (NaN for epochs of files from con2 versions that
        did not record them): what a longer training would cost on this machine.
    image_shape_ : tuple of int
        ``(n_channels, height, width)`` of the training images; image files are resized
        to it when scored.
    n_samples_fit_ : int
        Number of training images.
    reference_images_ : ndarray of shape (n_references, n_channels, height, width)
        A fixed random sample of the training images (at most 8192 and 16 MiB), as read
        (``uint8``, or floats in [0, 1]): the normal images :meth:`anomaly_maps` compares
        with.
    n_features_in_ : int
        Pixel values per image, ``prod(image_shape_)``.
    device_ : torch.device
        Where the network runs.
    precision_ : {"float32", "bfloat16"}
        The arithmetic training used (see ``precision``).

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
        # context, scorer, objective and backbone: the names the engine resolves
        **_engine.COMPONENT_CONSTRAINTS,
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
        "precision": [StrOptions({"auto", "float32", "bfloat16"})],
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
        objective="con2",
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
        precision="auto",
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
        self.objective = objective
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
        self.precision = precision
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
        fitted = _engine.fit(self, X)  # the detector changes only once the fit succeeded
        if "feature_names_in_" not in fitted:
            self.__dict__.pop("feature_names_in_", None)
        self.__dict__.update(fitted)
        return self

    def fit_predict(self, X, y=None):
        """Fit on ``X`` and label each training image; same as ``fit(X).predict(X)``.

        Reuses the leave-one-out training scores computed during ``fit``.

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
        self.fit(X)
        return _calibration.labels(self.calibration_scores_ - self.offset_)

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
            image (``"nnd"``) or of the Gaussian log-density (``"lh"``). A training image
            is scored leave-one-out (not as its own nearest neighbour, nor as part of its
            own mean and covariance).
        """
        check_is_fitted(self)
        return _engine.score(self, X)

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
        return _calibration.labels(self.decision_function(X))

    def anomaly_maps(self, X, method="gradient", reference="nearest"):
        """Return a map of each image: where it looks anomalous to this detector.

        Maps are the opposite of :meth:`score_samples`: **higher = more anomalous**, as
        heat maps show anomalies, so that a map's hot spots are where the anomaly is. A
        map says where moving the image toward a normal reference image would raise its
        normality score, and which pixels differ there (see :mod:`con2.maps`); pixels
        that would not gain are 0.
        The score is ``score_samples``' arithmetic for a new image (every image is
        treated as new, also a training image). Maps are deterministic, and an image's
        map is the same alone or in any batch.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`, computed a few images at a time.
        method : {"gradient", "input-gradient", "integrated", "occlusion"}, \
                default="gradient"
            ``"gradient"``: the score's gain of moving toward the reference (gradient
            times difference), averaged over each pixel's neighbourhood, times how far
            the pixel is from the reference; one forward and backward pass, chosen by
            ``benchmarks/maps.py``. ``"input-gradient"``: that gain pixel by pixel.
            ``"integrated"``: integrated gradients from the image to the reference (8
            steps, about 8 times the cost). ``"occlusion"``: windows of the image
            replaced by the reference's, a forward pass per window; the only method that
            sees through an ``"equalize"`` context, whose gradient is 0.
        reference : {"nearest", "mean"}, default="nearest"
            The normal image each image is compared with: the nearest in pixels of
            ``reference_images_`` (a fixed sample of the training images), or their mean.

        Returns
        -------
        maps : ndarray of shape (n_samples, height, width), float32
            At the model's image size (``image_shape_``), >= 0.
        """
        check_is_fitted(self)
        return _engine.anomaly_maps(self, X, method, reference)

    def embed(self, X, views=None):
        """Return L2-normalised backbone features of the images or of their test-time views.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`.
        views : None, "all" or array-like of int, default=None
            None: the images themselves (no context, no augmentation). ``"all"``: every
            fixed test-time view (``views_``), what the scorer sees. Indices: those
            test-time views, in that order.

        Returns
        -------
        embeddings : ndarray of shape (n_samples, embed_dim) or (n_views, n_samples, \
                embed_dim), float32
            The second shape when ``views`` is given: row ``[a, i]`` is view ``a`` of
            image ``i``, as a scorer's ``fit`` and ``score_samples`` take them.
        """
        check_is_fitted(self)
        return _engine.embed(self, X, views)

    def find_training_images(self, X):
        """Return, for each image, the index of the identical training image, or -1.

        Identical means equal pixels after reading (a hash of each training image is
        kept). Scoring uses it to score training images leave-one-out; it also shows
        test images that leaked from the training set.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`.

        Returns
        -------
        indices : ndarray of shape (n_samples,), int64
        """
        check_is_fitted(self)
        return _engine.find_training_images(self, X)

    def project(self, X, random_state=0):
        """Project training-like views of images through the objective's heads.

        Two random views of every image in every context, drawn as training draws them,
        in evaluation mode: for example ``self.objective_.loss(*det.project(X_held),
        progress=1.0)`` is the training loss on held-out normal images.

        Parameters
        ----------
        X : array-like of images, folder or list of image files
            As in :meth:`score_samples`; all views are kept in memory.
        random_state : int, RandomState instance or None, default=0
            Keys the random views.

        Returns
        -------
        projections : dict of str to Tensor of shape (n_views, proj_dim)
            Each head's output, float32, on the CPU: L2-normalised projections, except
            CSI's heads (its loss normalises ``"content"`` itself; ``"rotation"`` holds
            logits).
        contexts, instances : Tensor of shape (n_views,), long
            Context label and image index of each view.
        """
        check_is_fitted(self)
        return _engine.project(self, X, random_state)

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
        self.offset_ = _calibration.offset_for_fpr(self.calibration_scores_, fpr)
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
        return _calibration.p_values(self.calibration_scores_, self.score_samples(X))

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
        from con2.export import export  # the exporters are imported only when used

        export(self, path, format)

    def save(self, path):
        """Write the fitted detector to ``path`` in con2's weights-only format.

        Unlike joblib/pickle files, the file holds no code: :func:`con2.load` reads it
        with ``torch.load(weights_only=True)``. Only detectors built from the built-in
        contexts, objectives, backbone and scorers can be saved this way.

        Parameters
        ----------
        path : str or path-like
        """
        check_is_fitted(self)
        _persistence.save(self, path)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        # CUDA kernels (cuDNN convolutions, atomics) are not bitwise reproducible.
        tags.non_deterministic = self.device != "cpu" and torch.cuda.is_available()
        return tags

    def __getstate__(self):
        # a copy: never alter the live object (BaseEstimator returns __dict__ itself)
        return _persistence.portable_state(self, dict(super().__getstate__()))

    def __setstate__(self, state):
        _persistence.restore_state(self, dict(state))


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
    return _persistence.load(Con2Detector, path, device)
