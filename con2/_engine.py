"""Fit and scoring orchestration: everything between the estimator's face and the torch code.

:class:`con2.Con2Detector` validates its parameters and hands off here, as scikit-learn's
``IsolationForest.fit`` hands off to its trees. :func:`fit` resolves the components
(contexts, objective, scorer, backbone) before reading any data, reads the training
images, builds the encoder with the objective's heads, trains it (checkpoints, several
processes), draws the test-time views, fits the scorer and returns the fitted state for
the estimator to take over at once, so a failed fit leaves it as it was. :func:`score`
and the other readers of a fitted detector embed images a chunk at a time, in bounded
memory, backing off when CUDA runs out of memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from sklearn import get_config
from tqdm.auto import tqdm

from con2._calibration import offset_for_contamination
from con2._compat import HasMethods, StrOptions
from con2._distributed import check_sync_batchnorm, resolve_group
from con2._embedding import embed_training_set, embed_views, embedding_buffer, make_test_time_views
from con2._input import TrainingIndex, scoring_batches, to_float, training_images
from con2._persistence import check_output, checkpoint_for
from con2._training import (
    EpochPlan,
    Schedule,
    bfloat16_faulty_convolutions,
    fast_math,
    fit_encoder,
    make_views,
    place_images,
    progress_reporter,
    resolve_precision,
    view_keys,
)
from con2._utils import derive_seed, make_generator, release_cuda_memory, resolve_device, warn
from con2.augment import KeyedRandom, SimCLRAugment
from con2.contexts import CONTEXTS, resolve_contexts, warn_if_unsuitable
from con2.export import scoring_module
from con2.maps import METHODS, REFERENCES, ReferenceSet, maps_of, reference_for
from con2.networks import BACKBONES, build_encoder
from con2.objectives import OBJECTIVES, objective_contexts, resolve_objective
from con2.scorers import SCORERS, resolve_scorer

# The values the component parameters may take: the engine resolves them, so it says
# which resolve (the detector's table extends this one, as LocalOutlierFactor's extends
# its parent's). Checked by the estimator's parameter validation before any data is read.
COMPONENT_CONSTRAINTS = {
    "context": [StrOptions(set(CONTEXTS)), HasMethods(["__call__"]), list, tuple, None],
    "scorer": [StrOptions(set(SCORERS)), HasMethods(["fit", "score_samples"])],
    "objective": [StrOptions(set(OBJECTIVES)), HasMethods(["heads", "loss"])],
    "backbone": [StrOptions(set(BACKBONES)), callable],
}
_CHECK_SAMPLES = 256  # images check_context looks at during fit
_SCORING_CHUNK = 2048  # most images embedded and scored at once (scores do not depend on it)
_REFERENCE_IMAGES = 8192  # most training images kept as references for anomaly maps
_REFERENCE_BYTES = 16 * 2**20  # and at most this much of them


@dataclass(frozen=True)
class Components:
    """What a detector's parameters resolve to, before any data is read."""

    contexts: tuple
    objective: object
    scorer: object


def resolve_components(detector) -> Components:
    """Resolve contexts, objective and scorer; refuse what cannot work together.

    The contexts of a fit are the detector's, then the objective's own ``transforms``.
    """
    objective = resolve_objective(detector.objective, detector.temperature, detector.alpha_max)
    contexts = objective_contexts(objective, resolve_contexts(detector.context))
    if detector.n_test_augmentations < len(contexts) + 1:
        raise ValueError(
            f"n_test_augmentations={detector.n_test_augmentations} is fewer than the "
            f"{len(contexts) + 1} contexts; each context needs at least one view."
        )
    scorer = resolve_scorer(detector.scorer)
    _check_scorer_heads(scorer, objective, len(contexts))
    return Components(contexts, objective, scorer)


def _check_scorer_heads(scorer, objective, n_contexts: int) -> None:
    """Refuse a scorer that reads heads the objective does not build (before training)."""
    wanted = getattr(scorer, "heads", None)
    if not wanted:
        return
    with torch.random.fork_rng(devices=[]):  # the probe heads draw weights
        built = tuple(objective.heads(8, n_contexts))
    if not set(wanted) <= set(built):
        raise ValueError(
            f"The scorer {scorer!r} scores the heads {wanted} of the objective; "
            f"{objective!r} builds {built}. Use a scorer of backbone features ('nnd', "
            "'lh') or the objective it belongs to (CSIScorer: objective='csi')."
        )


def fit(detector, X) -> dict:
    """Train on ``X`` and fit the scorer; return the fitted attributes, by name."""
    components = resolve_components(detector)
    if detector.checkpoint_path is not None:  # before any image is read
        check_output(detector.checkpoint_path, "checkpoint_path")
    group, device = resolve_group(detector.distributed, detector.device)
    device = resolve_device(device)
    check_sync_batchnorm(detector.sync_batchnorm, group)
    with training_images(detector, X) as (images, on_disk, features):
        return {**features, **_fit_images(detector, components, images, on_disk, group, device)}


def _fit_images(detector, components, images, on_disk, group, device) -> dict:
    """Fit on canonical ``images`` (see :func:`fit`); return the fitted attributes."""
    contexts, objective, scorer = components.contexts, components.objective, components.scorer
    _check_training_set(detector, images, contexts, scorer, group)
    n_samples, image_shape = images.shape[0], tuple(images.shape[1:])
    warm = _continues(detector, image_shape, contexts, objective)
    previous = list(detector.loss_curve_) if warm else []
    seconds = list(detector.epoch_seconds_) if warm else []
    seed = (derive_seed(detector.random_state) + len(previous)) % np.iinfo(np.int32).max
    if warm:
        encoder = copy.deepcopy(detector.encoder_)  # the fitted one stays untouched
    else:

        def heads(embed_dim):
            return objective.heads(embed_dim, len(contexts))

        encoder = build_encoder(detector.backbone, detector.base_width, image_shape, seed, heads)
    augment = SimCLRAugment()
    # a no-grad pass of two zero images: cheap on any device (the rule is the CPU's)
    precision = resolve_precision(
        detector.precision, device, bfloat16_faulty_convolutions(encoder, image_shape)
    )
    plan = EpochPlan(images=place_images(images, device), contexts=contexts, augment=augment,
                     objective=objective, batch_size=min(detector.batch_size, n_samples),
                     seed=seed, device=device, group=group, precision=precision)  # fmt: skip
    encoder = encoder.to(device, memory_format=precision.memory_format)
    with fast_math(device):
        checkpoint = checkpoint_for(detector, images, plan, detector.encoder_ if warm else None)
        verbose = detector.verbose if group.is_main else 0  # progress from rank 0 only
        with progress_reporter(detector.n_epochs, verbose) as progress:
            losses, times = fit_encoder(encoder, plan, _schedule(detector, warm), checkpoint,
                                        progress)  # fmt: skip
        if device.type == "cpu":  # scoring runs in float32 on contiguous weights, as before
            encoder = encoder.to(memory_format=torch.contiguous_format)
        views = make_test_time_views(  # drawn on the CPU: the same on every device
            detector.n_test_augmentations, contexts, image_shape[1:], augment,
            make_generator(seed, torch.device("cpu")),
        )  # fmt: skip
        spill = on_disk and not group.active and not getattr(scorer, "memory_bank", False)
        scores = _fit_scorer(scorer, encoder, plan, views, spill, detector.cache_dir)
    return {
        "encoder_": encoder, "contexts_": contexts, "objective_": objective, "scorer_": scorer,
        "views_": views, "image_shape_": image_shape, "device_": device,
        "precision_": precision.name,
        "loss_curve_": previous + losses, "epoch_seconds_": seconds + times,
        "n_samples_fit_": n_samples, "_train_index": TrainingIndex(images),
        "reference_images_": reference_sample(images, seed),
        "calibration_scores_": scores,
        "offset_": offset_for_contamination(scores, detector.contamination),
    }  # fmt: skip


def _fit_scorer(scorer, encoder, plan, views, spill: bool, cache_dir) -> np.ndarray:
    """Fit the scorer on every training image's views; return calibration scores.

    With several processes each embeds its shard and all gather the whole, so every
    rank fits the identical scorer. ``spill``: the embeddings go to a file. A scorer that
    can leave an image out scores each training image without it.
    """
    n_samples, heads = plan.images.shape[0], getattr(scorer, "heads", None)
    shape = (len(views), n_samples, encoder.feature_dim(heads))
    with embedding_buffer(shape, spill, cache_dir) as out:
        forward = forward_size(plan.device, plan.batch_size)
        embeddings = embed_training_set(encoder, plan, views, forward, out, heads)
        scorer.fit(embeddings)
        loo = getattr(scorer, "leave_one_out", False)
        exclude = torch.arange(n_samples, device=plan.device) if loo else None
        return scorer.score_samples(embeddings, exclude).cpu().numpy()


def reference_sample(images, seed: int) -> np.ndarray:
    """Return a fixed random sample of canonical training images, in order, for maps."""
    n_samples = images.shape[0]
    per_image = images[0].numel() * images.element_size()
    keep = min(n_samples, _REFERENCE_IMAGES, max(1, _REFERENCE_BYTES // per_image))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_samples, keep, replace=False))
    return images[torch.from_numpy(chosen)].cpu().numpy()


def _check_training_set(detector, images, contexts, scorer, group) -> None:
    """Refuse training sets the method or the scorer cannot use; warn about contexts."""
    n_samples = images.shape[0]
    if n_samples < 2:
        raise ValueError(
            f"Con2Detector needs at least 2 training images; got n_samples={n_samples}."
        )
    needed = getattr(scorer, "min_samples", 2)
    if n_samples < needed:
        raise ValueError(
            f"The scorer {scorer!r} needs at least {needed} training images; got "
            f"n_samples={n_samples}."
        )
    if images[0].numel() < 2:
        raise ValueError(
            "Con2Detector needs images of more than one pixel; got n_features=1 "
            f"(image shape {tuple(images.shape[1:])})."
        )
    if min(detector.batch_size, n_samples) < group.world_size:
        raise ValueError(
            f"batch_size={detector.batch_size} (with {n_samples} images) is smaller than "
            f"the {group.world_size} processes sharing each batch; every process needs "
            "at least one image per step."
        )
    if group.is_main:
        warn_if_unsuitable(images, contexts, max_samples=_CHECK_SAMPLES)


def _continues(detector, image_shape, contexts, objective) -> bool:
    """Whether this fit continues the fitted encoder (``warm_start``)."""
    if not (detector.warm_start and hasattr(detector, "encoder_")):
        return False
    fitted = (detector.image_shape_, len(detector.contexts_), type(detector.objective_))
    if (image_shape, len(contexts), type(objective)) != fitted:
        raise ValueError(
            f"warm_start continues a model fitted on images of shape {fitted[0]} with "
            f"{fitted[1]} context(s) and a {fitted[2].__name__}; got {image_shape}, "
            f"{len(contexts)} and a {type(objective).__name__}. Set warm_start=False to "
            "train a new model."
        )
    return True


def _schedule(detector, warm: bool) -> Schedule:
    return Schedule(
        n_epochs=detector.n_epochs, learning_rate=detector.learning_rate,
        weight_decay=detector.weight_decay, warm=warm, compile=detector.compile,
        sync_batchnorm=detector.sync_batchnorm,
    )  # fmt: skip


def forward_size(device: torch.device, batch_size: int) -> int:
    """Return the number of views per forward pass when embedding.

    Small on the CPU, where throughput hardly depends on batch size; large on CUDA.
    """
    return 32 if device.type == "cpu" else 4 * batch_size


def score(detector, X) -> np.ndarray:
    """Scores of ``X`` (higher = more normal), float64, a batch of files at a time."""
    return np.concatenate([_score_images(detector, images)
                           for images in scoring_batches(detector, X)])  # fmt: skip


def _score_images(detector, images) -> np.ndarray:
    loo = getattr(detector.scorer_, "leave_one_out", False)
    index = detector._train_index
    exclude = index.lookup(images) if loo and index is not None else None
    heads = getattr(detector.scorer_, "heads", None)

    def compute(start, stop, forward):
        z = embed_views(detector.encoder_, images[start:stop], detector.views_, forward,
                        detector.device_, heads=heads)  # fmt: skip
        part = None if exclude is None else exclude[start:stop]
        return detector.scorer_.score_samples(z, part).cpu()

    per_image = 4 * len(detector.views_) * detector.encoder_.feature_dim(heads)
    return in_chunks(detector, images.shape[0], per_image, compute).numpy().astype(np.float64)


def in_chunks(detector, n_images: int, per_image: int, compute) -> torch.Tensor:
    """Concatenate ``compute(start, stop, forward)`` over chunks of ``n_images`` images.

    A chunk holds at most ``_SCORING_CHUNK`` images and what scikit-learn's
    ``working_memory`` allows at ``per_image`` bytes each, so memory does not grow with
    the data; ``forward`` is the number of views per forward pass. When CUDA runs out of
    memory, fewer images per chunk are tried first (results unchanged), then smaller
    forward passes.
    """
    megabytes = get_config()["working_memory"]
    chunk = max(1, min(_SCORING_CHUNK, megabytes * 2**20 // per_image))
    forward = forward_size(detector.device_, detector.batch_size)
    parts, start = [], 0
    while start < n_images:
        try:
            parts.append(compute(start, min(start + chunk, n_images), forward))
        except torch.cuda.OutOfMemoryError:
            if chunk == 1 and forward == 1:
                raise
            if chunk * len(detector.views_) > forward:
                chunk = max(1, chunk // 2)
            else:
                chunk, forward = max(1, chunk // 2), max(1, forward // 2)
            release_cuda_memory()
            warn(
                f"CUDA ran out of memory while scoring; retrying with {chunk} images "
                f"per chunk and {forward} views per forward pass."
            )
            continue
        start += chunk
    return torch.cat(parts)


def maps_views(device: torch.device, detector) -> int:
    """Return the number of views per pass of anomaly maps (a forward and a backward).

    Up to 8 times what embedding passes take, but at most 256 views of 28 x 28 pixels'
    worth of pixels, since the backward keeps every activation: on the CPU, a map of one
    image at a time costs 2.4 times as much as maps of four at a time (measured at
    28 px, width 8, 32 views).
    """
    height, width = detector.image_shape_[1:]
    by_pixels = max(1, 256 * 28 * 28 // (height * width))
    return min(8 * forward_size(device, detector.batch_size), by_pixels)


def anomaly_maps(detector, X, method: str, reference: str, **options) -> np.ndarray:
    """Return maps of ``X`` (n_samples, height, width), float32, higher = more anomalous.

    Images go through :func:`con2.maps.maps_of` a constant number at a time (the last
    group padded with zeros), so an image's map is the same alone or in any batch.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}; got {reference!r}.")
    stored = getattr(detector, "reference_images_", None)
    if stored is None:
        raise ValueError(
            "This detector keeps no reference images (it was saved by an older con2); "
            "refit it to draw anomaly maps."
        )
    device = detector.device_
    module = scoring_module(detector, device, purpose="mapped (anomaly_maps)")
    references = ReferenceSet(to_float(torch.from_numpy(stored)).to(device))
    group = max(1, maps_views(device, detector) // len(detector.views_))
    parts = []
    with tqdm(desc="Con2 maps", unit="image", disable=not detector.verbose) as bar:
        for images in scoring_batches(detector, X):
            bar.total = (bar.total or 0) + images.shape[0]
            for start in range(0, images.shape[0], group):
                x = to_float(images[start : start + group]).to(device)
                n_images = x.shape[0]
                if n_images < group:
                    x = torch.cat([x, x.new_zeros((group - n_images, *x.shape[1:]))])
                found = maps_of(module, x, reference_for(x, references, reference), method,
                                **options)  # fmt: skip
                parts.append(found[:n_images].cpu())
                bar.update(n_images)
    height, width = detector.image_shape_[1:]
    if not parts:
        return np.zeros((0, height, width), dtype=np.float32)
    return torch.cat(parts).numpy()


def embed(detector, X, views=None) -> np.ndarray:
    """L2-normalised backbone features of ``X``: of the images, or of test-time views.

    ``views``: None (the images themselves), ``"all"`` or indices of test-time views.
    """
    selected = None if views is None else _select_views(detector.views_, views)
    forward = forward_size(detector.device_, detector.batch_size)
    parts = [embed_views(detector.encoder_, images, selected, forward, detector.device_)
             .cpu().numpy() for images in scoring_batches(detector, X)]  # fmt: skip
    found = np.concatenate(parts, axis=1)
    return found[0] if views is None else found


def _select_views(fitted, views):
    if isinstance(views, str):
        if views != "all":
            raise ValueError(f"views must be None, 'all' or view indices; got {views!r}.")
        return fitted
    indices = np.asarray(views)
    n_views = len(fitted)
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or len(indices) == 0:
        raise ValueError(f"views must be None, 'all' or a 1-D list of view indices; got {views!r}.")
    if indices.min() < -n_views or indices.max() >= n_views:
        raise ValueError(f"view indices must lie in [0, {n_views}); got {views!r}.")
    return fitted.select(torch.from_numpy(indices % n_views))


def find_training_images(detector, X) -> np.ndarray:
    """Index of the identical training image for each image of ``X``, or -1."""
    index = detector._train_index
    if index is None:
        raise ValueError(
            "This detector keeps no index of its training images (it was saved by an older "
            "con2 with a scorer that does not leave images out); refit it to get one."
        )
    return np.concatenate([index.lookup(images).numpy() for images in scoring_batches(detector, X)])


def project(detector, X, random_state=0):
    """Heads' projections of training-like views of ``X``: ``(projections, contexts, instances)``.

    Two random views of every image in every context, drawn as training draws them
    (keyed by ``random_state``, the image's position in ``X``, its context and draw), in
    evaluation mode and without gradients: what the objective's loss would see of these
    images.
    """
    images = torch.cat([to_float(part) for part in scoring_batches(detector, X)])
    seed = random_state if isinstance(random_state, Integral) else derive_seed(random_state)
    contexts = detector.contexts_
    keys = view_keys(int(seed), 0, torch.arange(images.shape[0]), len(contexts) + 1)
    views, context_labels, instance_labels = make_views(
        images, contexts, detector.views_.augment, KeyedRandom(keys)
    )
    encoder, device = detector.encoder_, detector.device_
    forward = forward_size(device, detector.batch_size)
    encoder.eval()
    with torch.inference_mode():
        parts = [encoder(part.to(device)) for part in views.split(forward)]
    projections = {name: torch.cat([p[name] for p in parts]).float().cpu() for name in parts[0]}
    return projections, context_labels, instance_labels
