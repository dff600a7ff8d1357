"""The pure-torch training loop: views, one step, one epoch, a whole fit.

Generic over the training objective (:mod:`con2.objectives`): the loop draws the views,
runs the encoder and its heads, gathers projections over processes and steps the
optimiser; the objective alone turns projections into a loss. Nothing here knows about
scikit-learn. Shapes: images are (n_samples, n_channels, height,
width), ``uint8`` or floats in [0, 1]; views are normalised to [-1, 1] by
``(x - 0.5) / 0.5`` after the context and the augmentations [paper, appendix D].
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from tqdm.auto import tqdm

from con2._distributed import Group
from con2._embedding import normalize
from con2._input import to_float
from con2._utils import native_bfloat16, warn
from con2.augment import KeyedRandom, SimCLRAugment, hash_words
from con2.contexts import apply_context

# On the CPU, when a draw of the whole stack (every image in every context) is over
# glibc's 32 MiB mmap threshold, its intermediates would be mapped afresh and faulted in
# page by page on every step; the views are then made _PIECE_BYTES of images at a time,
# whose intermediates are reused from the heap. Below it one piece is faster (fewer,
# larger operations). benchmarks/README.md, "CPU: float32 against bfloat16", says more.
_MMAP_THRESHOLD = 32 * 2**20
_PIECE_BYTES = 4 * 2**20


def make_views(
    x: Tensor,
    contexts: tuple,
    augment: SimCLRAugment,
    random,
    offset: int = 0,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Two random views of every image in every context.

    Context first, then T, as at test time. View order: draw, then context, then image.
    On the CPU, large batches are made a few images at a time (the same views, bit for
    bit: contexts and T act on each image on its own); the views are written into ``out``.

    Parameters
    ----------
    x : Tensor of shape (batch_size, n_channels, height, width)
        Canonical images (``uint8``) or floats in [0, 1]; left unchanged.
    contexts : tuple of ContextAugmentation
        May be empty (a single context).
    augment : SimCLRAugment
        The family T.
    random : KeyedRandom or torch.Generator
        One key per view (see :func:`view_keys`), or a generator, on the device of ``x``.
    offset : int, default=0
        Position of ``x``'s first image in the global batch: instance labels stay unique
        when several processes share a batch.
    out : Tensor, optional
        Where to write the views: float32, of the views' shape, on the device of ``x``,
        in any memory format (the views come back in it). A training loop passes the
        previous step's views, once they are no longer needed, so that no step allocates
        them anew. By default a new contiguous tensor.

    Returns
    -------
    views : Tensor of shape (2 * (n_contexts + 1) * batch_size, n_channels, height, width)
        Normalised views (``out`` itself when given).
    context_labels : Tensor of shape (n_views,), long
    instance_labels : Tensor of shape (n_views,), long
    """
    batch_size, n = x.shape[0], (len(contexts) + 1) * x.shape[0]
    shape = (2 * n, *x.shape[1:])
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=x.device)
    elif out.shape != shape or out.dtype != torch.float32 or out.device != x.device:
        raise ValueError(
            f"out must be float32 of shape {shape} on {x.device}; got {out.dtype} of shape "
            f"{tuple(out.shape)} on {out.device}."
        )
    params = augment.sample(2 * n, tuple(x.shape[-2:]), random)
    per_piece, image_bytes = batch_size, 4 * x[0].numel()
    # Elsewhere one piece: the CUDA caching allocator reuses memory, and each piece costs
    # kernel launches.
    if x.device.type == "cpu" and n * image_bytes > _MMAP_THRESHOLD:
        per_piece = max(1, _PIECE_BYTES // image_bytes)
    for start in range(0, batch_size, per_piece):
        images = to_float(x[start : start + per_piece])
        for k, context in enumerate((None, *contexts)):
            seen = images if context is None else apply_context(context, images)
            for draw in range(2):
                first = draw * n + k * batch_size + start
                rows = slice(first, first + seen.shape[0])
                out[rows] = augment.apply(seen, params.map(lambda t, rows=rows: t[rows]))
    views = normalize(out, in_place=True)
    return views, *view_labels(batch_size, len(contexts) + 1, offset, x.device)


def view_labels(batch_size: int, n_contexts: int, offset: int, device) -> tuple[Tensor, Tensor]:
    """Context and instance label of each view, in :func:`make_views`' order."""
    context_labels = torch.arange(n_contexts, device=device).repeat_interleave(batch_size)
    instance_labels = torch.arange(offset, offset + batch_size, device=device).repeat(n_contexts)
    return context_labels.repeat(2), instance_labels.repeat(2)


def view_keys(seed: int, epoch: int, indices: Tensor, n_contexts: int) -> Tensor:
    """One key per view, in :func:`make_views`' order, from (seed, epoch, image, context, draw).

    A view's random transform depends on nothing else: not on the batch, the process or
    the number of processes.
    """
    draws = torch.arange(2, device=indices.device)[:, None, None]
    contexts = torch.arange(n_contexts, device=indices.device)[None, :, None]
    return hash_words(seed, epoch, indices[None, None, :], contexts, draws).flatten()


def epoch_order(n_samples: int, seed: int, epoch: int) -> Tensor:
    """Return the shuffled order of an epoch, on the CPU: the same in every process."""
    generator = torch.Generator().manual_seed(int(hash_words(seed, epoch, 0x0DE5)))
    return torch.randperm(n_samples, generator=generator)


@dataclass(frozen=True)
class Precision:
    """How the training steps compute.

    ``dtype`` is the autocast dtype of the forward and backward passes (float32: no
    autocast); weights, optimiser state and the loss stay float32 either way.
    ``memory_format`` is the layout of the weights and the views during training.
    """

    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def name(self) -> str:
        """``"bfloat16"`` or ``"float32"``, as the ``precision`` parameter spells it."""
        return "bfloat16" if self.dtype == torch.bfloat16 else "float32"

    def autocast(self, device: torch.device):
        """Return the autocast context of the training steps on ``device``."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


# The memory format of each (device, dtype), chosen by measurement: channels-last on
# CUDA (tensor-core convolutions); on the CPU, bfloat16 channels-last is the faster from
# width 16 on both CPUs measured, and at width 8 it depends on the CPU (benchmarks/README.md,
# "CPU: float32 against bfloat16").
_MEMORY_FORMATS = {
    ("cuda", torch.bfloat16): torch.channels_last,
    ("cuda", torch.float32): torch.channels_last,
    ("cpu", torch.bfloat16): torch.channels_last,
    ("cpu", torch.float32): torch.contiguous_format,
}


def resolve_precision(precision: str, device: torch.device, faulty: tuple = ()) -> Precision:
    """Turn the ``precision`` parameter into a :class:`Precision` on ``device``.

    ``"auto"`` is bfloat16 on CUDA and on CPUs that compute it in hardware
    (:func:`con2._utils.native_bfloat16`), float32 elsewhere. bfloat16 asked for on a CPU
    without it is honoured, with a warning that it will be slow. ``faulty`` names the
    encoder's convolutions whose bfloat16 gradient the CPU gets wrong
    (:func:`bfloat16_faulty_convolutions`): with any, ``"auto"`` is float32 on the CPU
    and ``"bfloat16"`` there is refused.
    """
    native = device.type == "cuda" or native_bfloat16()
    faulty = faulty if device.type == "cpu" else ()  # the fault is the CPU's
    if precision == "auto":
        precision = "bfloat16" if native and not faulty else "float32"
    if precision == "bfloat16" and faulty:
        raise ValueError(
            "precision='bfloat16' cannot train this encoder on the CPU: convolutions with "
            "a kernel wider than one pixel and a stride above one across the width see "
            f"feature maps one pixel wide ({', '.join(faulty)}), and the CPU's bfloat16 "
            "weight gradient of such a convolution is garbage (NaN). Use precision='float32' "
            "(or 'auto', which chooses it here), or images at least 5 pixels wide for the "
            "built-in ResNet18."
        )
    if precision == "bfloat16" and not native:
        warn(
            "precision='bfloat16' on a CPU without native bfloat16 support (AVX512-BF16, "
            "AMX or ARM BF16): every operation converts to float32 and back, so training "
            "will be slower than with precision='float32'."
        )
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    return Precision(dtype, _MEMORY_FORMATS[device.type, dtype])


def bfloat16_faulty_convolutions(encoder: nn.Module, image_shape: tuple) -> tuple:
    """Name the convolutions of ``encoder`` whose bfloat16 weight gradient the CPU gets wrong.

    With torch 2.14.1 on an Intel Xeon with AMX, the bfloat16 (autocast) weight gradient
    of a ``Conv2d`` whose input is one pixel wide, whose kernel is wider than one pixel
    and whose stride across the width is above one holds uninitialised values (not finite
    in 25% to 80% of the calls measured): oneDNN's kernel for that shape. float32 is right, and
    so is every other shape measured (inputs 1 to 6 pixels a side, kernels 1, 3 and 7,
    strides 1 and 2). The built-in ResNet18 meets it on images under 5 pixels wide (1 x
    ``n_features`` tables of 4 features or fewer). A probe forward pass on a zero batch of
    ``image_shape`` finds them in any backbone, without updating batch-norm statistics.
    """
    found = []

    def hook(name):
        def check(module, args):
            if args[0].shape[-1] == 1 and module.kernel_size[-1] > 1 and module.stride[-1] > 1:
                found.append(name)

        return check

    convolutions = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]
    handles = [module.register_forward_pre_hook(hook(name)) for name, module in convolutions]
    parameter = next(encoder.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros(2, *image_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        encoder.train(was_training)
    return tuple(found)


def train_step(encoder, objective, optimizer, batch: tuple, progress: float, group=None,
               sizes=None, precision: Precision = Precision()) -> Tensor:  # fmt: skip
    """One optimisation step on ``batch = (views, context_labels, instance_labels)``.

    ``objective`` (see :mod:`con2.objectives`) turns the heads' projections into the
    loss, at training ``progress`` in [0, 1]; ``precision`` says how the forward and
    backward passes compute. With a distributed ``group``, ``views`` are
    this rank's and the labels those of every rank's views in rank order (``sizes[r]``
    views on rank r): the projections are gathered and this rank's loss is that of its
    own anchors against all views, times the number of ranks, so that the gradient
    averaged by ``DistributedDataParallel`` is the single-process gradient of the global
    batch. Returns this rank's share of the loss as a detached 0-d tensor (no host
    synchronisation).
    """
    views, context_labels, instance_labels = batch
    views = views.contiguous(memory_format=precision.memory_format)
    with record_function("con2::forward"), precision.autocast(views.device):
        projections = encoder(views)
    with record_function("con2::loss"):
        anchors, scale = None, 1
        if group is not None and group.active:
            start = sum(sizes[: group.rank])
            anchors, scale = slice(start, start + sizes[group.rank]), group.world_size
            projections = {name: group.gather(z, sizes) for name, z in projections.items()}
        loss = objective.loss(projections, context_labels, instance_labels, progress, anchors)
    with record_function("con2::backward"):
        optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
    with record_function("con2::optimizer"):
        optimizer.step()
    return loss.detach()


@dataclass
class EpochPlan:
    """What one epoch needs besides the model and the optimiser.

    The training images (on the device, or in host memory when they do not fit), the
    contexts, the augmentation family, the objective (:mod:`con2.objectives`), images
    per step (the global batch), the seed that keys every random draw, the device where
    the steps run, the processes sharing the training
    (:class:`con2._distributed.Group`) and how the steps compute (:class:`Precision`).
    """

    images: Tensor
    contexts: tuple
    augment: SimCLRAugment
    objective: object
    batch_size: int
    seed: int
    device: torch.device
    group: Group = field(default_factory=Group)
    precision: Precision = field(default_factory=Precision)


def train_epoch(encoder, optimizer, scheduler, plan: EpochPlan, epoch: int,
                progress) -> Tensor:  # fmt: skip
    """Run epoch ``epoch`` over shuffled ``plan.images``, dropping the last incomplete batch.

    ``encoder`` may be a compiled or distributed wrapper of the encoder. ``progress``
    yields the training progress of each step (:func:`progress_schedule`). Each rank
    takes its shard of every global batch. No step synchronises with the host: images
    stay on the device (or, when they do not fit, are gathered into pinned memory and
    copied without blocking), and the mean loss over the global batch is returned as a
    0-d device tensor for the caller to read once per epoch.
    """
    encoder.train()
    n_samples, device, group = plan.images.shape[0], plan.device, plan.group
    order = epoch_order(n_samples, plan.seed, epoch).to(plan.images.device)  # once per epoch
    n_contexts = len(plan.contexts) + 1
    bounds = group.bounds(plan.batch_size)
    start, stop = bounds[group.rank]
    sizes = [2 * n_contexts * (b - a) for a, b in bounds]
    labels = [torch.cat(parts) for parts in zip(*(view_labels(b - a, n_contexts, a, device)
                                                  for a, b in bounds), strict=True)]  # fmt: skip
    n_batches = n_samples // plan.batch_size
    total = torch.zeros((), device=device)
    # Every step writes its views where the last step's were (in the layout the steps
    # compute in): a new batch of large views each step would be mapped and faulted in
    # afresh (see make_views).
    views = torch.empty((sizes[group.rank], *plan.images.shape[1:]), dtype=torch.float32,
                        device=device, memory_format=plan.precision.memory_format)  # fmt: skip
    for index in range(n_batches):
        batch_indices = order[index * plan.batch_size : (index + 1) * plan.batch_size][start:stop]
        with record_function("con2::views"):  # gather, context, T, normalise
            x = _fetch(plan.images, batch_indices, device)
            keys = view_keys(plan.seed, epoch, batch_indices.to(device, non_blocking=True),
                             n_contexts)  # fmt: skip
            views = make_views(x, plan.contexts, plan.augment, KeyedRandom(keys), out=views)[0]
        total += train_step(encoder, plan.objective, optimizer, (views, *labels),
                            next(progress), group, sizes, plan.precision)  # fmt: skip
        scheduler.step()
    return group.sum(total) / n_batches


def _fetch(images: Tensor, indices: Tensor, device: torch.device) -> Tensor:
    """Gather a batch onto ``device``; from host memory through a pinned buffer."""
    batch = images.index_select(0, indices)
    if batch.device == device:
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


@contextlib.contextmanager
def fast_math(device: torch.device):
    """Allow TF32 matrix products and convolutions on CUDA, restoring the caller's flags."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build_optimizer(encoder: nn.Module, learning_rate: float, weight_decay: float, n_steps: int):
    """AdamW (betas 0.9, 0.999) with cosine annealing over ``n_steps`` steps [appendix E]."""
    optimizer = torch.optim.AdamW(
        encoder.parameters(), lr=learning_rate, betas=(0.9, 0.999), weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, n_steps))
    return optimizer, scheduler


def progress_schedule(n_steps: int, start: int = 0, warm: bool = False):
    """Yield the training progress of each step, rising linearly from 0 to 1.

    ``warm`` (continuing a fitted encoder) holds it at 1: the objective's schedule (Con2's
    content weight, say) stays where the first fit left it.
    """
    for step in range(start, n_steps):
        yield 1.0 if warm else step / max(1, n_steps - 1)


@dataclass
class Schedule:
    """The optimisation settings of one fit (the paper's appendix E)."""

    n_epochs: int
    learning_rate: float
    weight_decay: float
    warm: bool = False
    compile: bool = False
    sync_batchnorm: bool = False


def fit_encoder(encoder, plan: EpochPlan, schedule: Schedule, checkpoint, progress) -> tuple:
    """Train ``encoder`` for ``schedule.n_epochs`` epochs; return each epoch's loss and seconds.

    ``checkpoint`` (a :class:`con2._persistence.Checkpoint` or None) is resumed from if it
    holds a state of this very fit, and written every ``checkpoint.every`` epochs (by rank
    0, after a barrier): a resumed fit ends in the same state as an uninterrupted one,
    with any number of processes. ``progress(epoch, loss)`` is called after each epoch.
    With ``schedule.compile`` the steps run through ``torch.compile``, which shares the
    encoder's weights. With a distributed ``plan.group`` the steps run through
    ``DistributedDataParallel`` (with ``SyncBatchNorm`` layers if
    ``schedule.sync_batchnorm``), every rank reads the same loss, and every rank ends
    with rank 0's weights and buffers.
    """
    group = plan.group
    trained = _with_sync_batchnorm(encoder) if schedule.sync_batchnorm else encoder
    model = trained
    if group.active:
        devices = [plan.device.index] if plan.device.type == "cuda" else None
        model = DistributedDataParallel(trained, device_ids=devices)
    if schedule.compile:
        model = torch.compile(model, options=_compile_options(plan))
    steps_per_epoch = plan.images.shape[0] // plan.batch_size
    n_steps = schedule.n_epochs * steps_per_epoch
    optimizer, scheduler = build_optimizer(
        trained, schedule.learning_rate, schedule.weight_decay, n_steps
    )
    state = checkpoint.load() if checkpoint is not None else None
    losses, seconds, start = [], [], 0
    if state is not None:
        trained.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        losses, seconds = list(state["losses"]), list(state["seconds"])
        start = len(losses)
    steps = progress_schedule(n_steps, start * steps_per_epoch, warm=schedule.warm)
    for epoch in range(start, schedule.n_epochs):
        began = time.perf_counter()
        # the same number on every rank (a sum over ranks), so all stop together; reading
        # it waits for the epoch's last step, so the clock below measures the whole epoch
        loss = float(train_epoch(model, optimizer, scheduler, plan, epoch, steps))
        if not math.isfinite(loss):
            in_bfloat16 = plan.precision.name == "bfloat16"
            raise FloatingPointError(
                f"The training loss became {loss} in epoch {epoch + 1}. Lower learning_rate "
                f"(now {schedule.learning_rate}) or raise the objective's temperature "
                f"({plan.objective!r})"
                + (", or train in float32 (precision='float32')" if in_bfloat16 else "")
                + "; the estimator keeps its previous state."
            )
        losses.append(loss)
        seconds.append(time.perf_counter() - began)
        progress(epoch, loss)
        if checkpoint is not None and (
            (epoch + 1) % checkpoint.every == 0 or epoch + 1 == schedule.n_epochs
        ):
            group.barrier()
            if group.is_main:
                checkpoint.save({
                    "encoder": trained.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "losses": losses,
                    "seconds": seconds,
                })  # fmt: skip
    if trained is not encoder:
        encoder.load_state_dict(trained.state_dict())
    if group.active:  # buffers (batch-norm statistics) were updated per rank
        for tensor in encoder.state_dict().values():
            dist.broadcast(tensor, src=0)
    return losses, seconds


def _compile_options(plan: EpochPlan) -> dict:
    """Inductor options of a compiled fit.

    On the CPU in float32, no layout optimisation: it turns convolutions channels-last,
    and torch 2.14's CPU backward of float32 channels-last convolutions corrupts memory at
    small widths (width 8 from 48 px, measured: the process dies); float32 trains
    contiguous on the CPU anyway (see ``_MEMORY_FORMATS``).
    """
    if plan.device.type == "cpu" and plan.precision.dtype == torch.float32:
        return {"layout_optimization": False}
    return {}


def _with_sync_batchnorm(encoder):
    """Copy ``encoder`` with batch-norm layers that synchronise statistics over ranks."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(encoder))


def place_images(images: Tensor, device: torch.device) -> Tensor:
    """Keep the training images on the device if they fit in a quarter of its free memory.

    Otherwise they stay in host memory and travel batch by batch (``_fetch``).
    """
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() < free // 4:
        return images.to(device)
    return images


@contextlib.contextmanager
def progress_reporter(n_epochs: int, verbose: int):
    """Yield a per-epoch callback: a tqdm bar (verbose >= 1), lines (verbose >= 2).

    The bar is closed on leaving the block, also after an error or an interrupt.
    """
    bar = tqdm(total=n_epochs, desc="Con2 fit", unit="epoch", disable=not verbose)

    def report(epoch, loss):
        bar.n = epoch + 1
        bar.set_postfix(loss=f"{loss:.4f}")
        if verbose >= 2:
            bar.write(f"epoch {epoch + 1}/{n_epochs}: loss {loss:.4f}", file=sys.stderr)

    try:
        yield report
    finally:
        bar.close()
