"""Test-time views and embeddings: everything scoring needs from the trained network.

The fixed test-time views (drawn once at ``fit``), the embedding of every view of every
image in forward passes of a constant size, and the training set's embeddings (gathered
over processes, or written to a file for data on disk). Shapes: images are (n_samples,
n_channels, height, width), ``uint8`` or floats in [0, 1]; views are normalised to
[-1, 1] by ``(x - 0.5) / 0.5`` after the context and the augmentations [paper, appendix D].
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from con2._input import to_float
from con2._utils import allocate, scratch_folder
from con2.augment import AugmentParams, SimCLRAugment
from con2.contexts import apply_context


def normalize(x: Tensor, in_place: bool = False) -> Tensor:
    """Map floats in [0, 1] to [-1, 1], the input range of the network.

    ``in_place`` overwrites ``x`` (the same arithmetic, without a new tensor).
    """
    return x.sub_(0.5).div_(0.5) if in_place else (x - 0.5) / 0.5


def context_images(x: Tensor, contexts: tuple) -> Tensor:
    """Stack ``x`` and each context of it: shape ((n_contexts + 1) * batch_size, C, H, W)."""
    return torch.cat([x, *(apply_context(c, x) for c in contexts)])


@dataclass
class TestTimeViews:
    """The fixed test-time augmentations: view ``a`` is ``t_a`` applied to context ``k_a``.

    Attributes
    ----------
    contexts : tuple of ContextAugmentation
        The contexts; index 0 of ``view_contexts`` is the image itself.
    augment : SimCLRAugment
        The family the transforms were drawn from.
    params : AugmentParams
        One parameter set per view, drawn once at fit, on the CPU.
    view_contexts : Tensor of shape (n_views,), long
        Context index of each view (0 = the image itself, k = ``contexts[k - 1]``).
    """

    contexts: tuple
    augment: SimCLRAugment
    params: AugmentParams
    view_contexts: Tensor

    def __len__(self) -> int:
        return len(self.params)

    def select(self, indices: Tensor) -> TestTimeViews:
        """Return the views at ``indices`` (a long tensor on the CPU), in that order."""
        params = self.params.map(lambda t: t[indices.to(t.device)])
        return TestTimeViews(self.contexts, self.augment, params,
                             self.view_contexts[indices.to(self.view_contexts.device)])  # fmt: skip

    def to(self, device: torch.device) -> TestTimeViews:
        """Return the same views with their tensors on ``device``."""
        params = self.params.map(lambda t: t.to(device))
        return TestTimeViews(self.contexts, self.augment, params, self.view_contexts.to(device))

    def apply(self, x: Tensor) -> Tensor:
        """All views of ``x`` (floats in [0, 1], shape (batch_size, C, H, W)), normalised.

        The views' tensors must be on ``x``'s device (see :meth:`to`). Returns a tensor of
        shape (n_views * batch_size, C, H, W), view-major.
        """
        batch_size = x.shape[0]
        stacked = context_images(x, self.contexts)  # ((n_contexts + 1) * batch_size, ...)
        images = stacked.view(len(self.contexts) + 1, batch_size, *x.shape[1:])
        views = images[self.view_contexts].flatten(0, 1)
        params = self.params.map(lambda t: _per_image(t, batch_size))
        return normalize(self.augment.apply(views, params), in_place=True)  # a new tensor


def _per_image(t: Tensor, batch_size) -> Tensor:
    """``t.repeat_interleave(batch_size, dim=0)``, written so that it exports.

    With a dynamic batch, ``repeat_interleave`` exports to ONNX but fails inside ONNX
    Runtime (dynamo exporter, torch 2.14); expanding a new axis computes the same.
    """
    return t.unsqueeze(1).expand(t.shape[0], batch_size, *t.shape[1:]).flatten(0, 1)


def make_test_time_views(
    n_views: int, contexts: tuple, size: tuple, augment: SimCLRAugment, generator
) -> TestTimeViews:
    """Draw ``n_views`` fixed transforms, split as evenly as possible over the contexts.

    With one context augmentation, the first half of the views see the image itself and
    the second half its context [paper, S_D in appendix B.2].
    """
    params = augment.sample(n_views, size, generator).map(lambda t: t.cpu())
    view_contexts = torch.arange(n_views) * (len(contexts) + 1) // n_views
    return TestTimeViews(contexts, augment, params, view_contexts)


def embed_views(
    encoder,
    images: Tensor,
    views: TestTimeViews | None,
    forward_size: int,
    device: torch.device,
    out: Tensor | None = None,
    heads: tuple | None = None,
) -> Tensor:
    """Embed every test-time view of every image.

    Every forward pass sees exactly ``forward_size`` views (the last one padded with
    zeros). Convolution kernels are chosen by batch size, and their float32 results differ
    between kernels in the last bits; a constant batch size makes an image's embedding
    bit-identical whichever other images it is scored with.

    Parameters
    ----------
    encoder : Encoder
    images : Tensor of shape (n_samples, n_channels, height, width)
        Canonical images, on any device.
    views : TestTimeViews or None
        None embeds the images themselves (one view, no context, no augmentation).
    forward_size : int
        Views per forward pass.
    device : torch.device
        Where the network runs.
    out : Tensor of shape (n_views, n_samples, embed_dim), float32, default=None
        Where to write the embeddings (a buffer on disk, say), chunk by chunk.
    heads : tuple of str, default=None
        None: L2-normalised backbone features. Names: those heads' outputs side by side
        (``Encoder.features``), for scorers that compare head outputs.

    Returns
    -------
    Tensor of shape (n_views, n_samples, embed_dim), float32
        ``out`` when given, else a new tensor on ``device``.
    """
    n_views = 1 if views is None else len(views)
    views = None if views is None else views.to(device)  # once, not per chunk
    per_chunk = max(1, forward_size // n_views)
    chunks = []
    encoder.eval()
    with torch.inference_mode():
        for start in range(0, images.shape[0], per_chunk):
            x = to_float(images[start : start + per_chunk].to(device))
            batch = normalize(x) if views is None else views.apply(x)
            parts = batch.split(forward_size)
            z = torch.cat([_padded_embed(encoder, part, forward_size, heads) for part in parts])
            z = z.view(n_views, x.shape[0], -1)
            if out is None:
                chunks.append(z)
            else:
                out[:, start : start + x.shape[0]] = z.to(out.device)
    return torch.cat(chunks, dim=1) if out is None else out


def embed_training_set(encoder, plan, views, forward_size: int, out=None, heads=None) -> Tensor:
    """Embed every view of every training image, shape (n_views, n_samples, embed_dim).

    ``plan`` is the fit's :class:`con2._training.EpochPlan` (images, device, group).

    With several processes each embeds its shard of the images and all gather the whole,
    in order, so that every rank fits the identical scorer. ``out`` as in
    :func:`embed_views` (single process only); ``heads`` as there.
    """
    group, images = plan.group, plan.images
    if not group.active:
        return embed_views(encoder, images, views, forward_size, plan.device, out, heads)
    bounds = group.bounds(images.shape[0])
    start, stop = bounds[group.rank]
    mine = embed_views(encoder, images[start:stop], views, forward_size, plan.device,
                       heads=heads)  # fmt: skip
    rows = group.gather_rows(mine.transpose(0, 1).contiguous(), [b - a for a, b in bounds])
    return rows.transpose(0, 1)


@contextlib.contextmanager
def embedding_buffer(shape: tuple, on_disk: bool, directory=None):
    """Yield a float32 buffer of ``shape`` in a temporary file, or None (in memory).

    For training sets on disk: their embeddings, ``n_views * n_samples * embed_dim``
    floats, would otherwise be the one thing in a fit that grows with the data in memory.
    The file's room is reserved first, and it is removed on leaving the block (see
    :func:`con2._utils.scratch_folder`).
    """
    if not on_disk:
        yield None
        return
    nbytes = 4 * int(np.prod(shape))
    with scratch_folder("con2-embeddings-", directory, nbytes) as folder:
        allocate(folder / "embeddings.f32", nbytes)
        array = np.memmap(folder / "embeddings.f32", dtype=np.float32, mode="r+", shape=shape)
        yield torch.from_numpy(array)
        del array


def _padded_embed(encoder, x: Tensor, size: int, heads=None) -> Tensor:
    n_rows = x.shape[0]
    if n_rows < size:
        x = torch.cat([x, x.new_zeros(size - n_rows, *x.shape[1:])])
    return encoder.features(x, heads)[:n_rows]
