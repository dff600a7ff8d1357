"""Functions that spawned test processes run: each is one rank of a gloo process group."""

import contextlib
import itertools
import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from con2 import Con2Detector
from con2._distributed import Group
from con2._training import make_views, train_step, view_keys, view_labels
from con2.augment import KeyedRandom, SimCLRAugment
from con2.contexts import VerticalFlip
from con2.networks import Encoder
from con2.objectives import OBJECTIVES, Con2Objective, objective_contexts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoBatchNorm(nn.Module):
    """A small network without batch normalisation: its output for an image does not
    depend on the other images of the batch."""

    def __init__(self, image_shape):
        super().__init__()
        channels = image_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(16, 8),
        )  # fmt: skip
        self.embed_dim = 8

    def forward(self, x):
        return self.net(x)


def no_batchnorm(image_shape):
    return NoBatchNorm(image_shape)


def tiny_encoder(objective="con2"):
    """An objective's heads on a network without batch norm, for 8x8 grayscale images."""
    objective = build_objective(objective)
    return Encoder(NoBatchNorm((1, 8, 8)), objective.heads(8, len(contexts_of(objective))))


def build_objective(name):
    """A built-in objective by name, or ``"con2-outliers"``: Con2 with rot90 and rot270."""
    if name == "con2-outliers":
        return Con2Objective(outliers=["rot90", "rot270"])
    return OBJECTIVES[name]()


def contexts_of(objective):
    """The contexts of a step: vflip for objectives that take one, then the objective's."""
    mine = (VerticalFlip(),) if getattr(objective, "uses_contexts", True) else ()
    return objective_contexts(objective, mine)


def tiny_batch(n_images=6, seed=0):
    """A global batch of grayscale 8x8 images, with a visible top and bottom."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 0.7, 8).view(1, 1, 8, 1)
    return (ramp + 0.3 * torch.rand(n_images, 1, 8, 8, generator=generator)).clamp(0, 1)


def step_gradients(encoder, x, indices, group=None, objective="con2"):
    """Gradients of one training step of ``encoder`` on this rank's part of a batch.

    Builds views and labels exactly as ``train_epoch`` does and calls ``train_step``
    with an optimizer that does not move the weights, so the gradients stay readable.
    """
    group, objective = group or Group(), build_objective(objective)
    contexts = contexts_of(objective)
    n_contexts = len(contexts) + 1
    bounds = group.bounds(len(indices))
    start, stop = bounds[group.rank]
    keys = view_keys(0, 0, indices[start:stop], n_contexts)
    views = make_views(x[start:stop], contexts, SimCLRAugment(), KeyedRandom(keys))[0]
    labels = [torch.cat(parts) for parts in zip(*(view_labels(b - a, n_contexts, a, x.device)
                                                  for a, b in bounds), strict=True)]  # fmt: skip
    sizes = [2 * n_contexts * (b - a) for a, b in bounds]
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.0)
    train_step(encoder, objective, optimizer, (views, *labels), 0.7, group, sizes)
    module = encoder.module if isinstance(encoder, DistributedDataParallel) else encoder
    return {name: p.grad.clone() for name, p in module.named_parameters()}


class PlainGatherGroup(Group):
    """The bug this project avoids: a gather without gradients to the other ranks' rows."""

    def gather(self, tensor, sizes):
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        parts = [part[:size] for part, size in zip(parts, sizes, strict=True)]
        parts[self.rank] = tensor  # only this rank's own rows carry gradients
        return torch.cat(parts)


def gradient_worker(rank, world, port, folder, objectives):
    """One rank's DDP gradients for its shard of the same global batch, per objective.

    Saved as ``grads{rank}-{objective}.pt``, and ``...-control.pt`` for the same step with
    the plain gather of :class:`PlainGatherGroup`; every objective in one process group,
    so the processes start once.
    """
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        for objective, control in itertools.product(objectives, (False, True)):
            torch.manual_seed(0)
            encoder = DistributedDataParallel(tiny_encoder(objective))
            group = (PlainGatherGroup if control else Group)(rank, world)
            grads = step_gradients(encoder, tiny_batch(), torch.arange(6), group, objective)
            name = f"grads{rank}-{objective}" + ("-control" if control else "")
            torch.save(grads, Path(folder) / f"{name}.pt")
    finally:
        dist.destroy_process_group()


def fit_worker(rank, world, port, folder, settings, nan_on_rank=None):
    """Fit a detector as one of ``world`` torchrun-style processes; save what it holds."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    folder = Path(folder)
    X = np.load(folder / "X.npy")
    settings = json.loads(settings)
    if settings.pop("no_batchnorm", False):
        settings["backbone"] = no_batchnorm
    if nan_on_rank == rank:  # the loss of this rank's anchors turns NaN (through the graph)
        original = Con2Objective.loss
        Con2Objective.loss = lambda self, *args: original(self, *args) * float("nan")
    stderr = open(folder / f"stderr{rank}.txt", "w")
    try:
        with contextlib.redirect_stderr(stderr):
            det = Con2Detector(**settings).fit(X)
        torch.save({
            "state": det.encoder_.state_dict(), "scores": det.score_samples(X[:10]),
            "offset": det.offset_, "losses": det.loss_curve_, "world": dist.get_world_size(),
        }, folder / f"fit{rank}.pt")  # fmt: skip
    except Exception as exc:  # recorded for the test to compare between ranks
        (folder / f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        stderr.close()
        if dist.is_initialized():
            dist.destroy_process_group()
