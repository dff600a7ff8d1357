"""Data-parallel training over ``torch.distributed``: the process group, shards, gathers.

One model is trained by ``world_size`` processes (one device each, or CPU processes with
gloo), as ``torchrun --nproc_per_node=N script.py`` launches them. Every process holds the
whole training set and the same epoch order; each takes its shard of every global batch.
The views of each rank are gathered with an autograd-aware all-gather, and each rank's
loss is that of its own anchors against every rank's views, scaled so that, after
``DistributedDataParallel`` averages the gradients, the update is the single-process
update over the global batch. A world of one process is exactly the single-process path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Group", "all_gather_with_grad", "check_sync_batchnorm", "resolve_group"]


@dataclass(frozen=True)
class Group:
    """The processes training one model: this one's ``rank`` among ``world_size``."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        """Whether other processes take part (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and progress (rank 0)."""
        return self.rank == 0

    def bounds(self, n: int) -> list:
        """``(start, stop)`` of every rank's shard of ``n`` items, sizes differing by <= 1."""
        return [(r * n // self.world_size, (r + 1) * n // self.world_size)
                for r in range(self.world_size)]  # fmt: skip

    def gather(self, tensor: Tensor, sizes: list) -> Tensor:
        """Every rank's ``tensor`` (``sizes[r]`` rows on rank r), in rank order, with grads."""
        if not self.active:
            return tensor
        return all_gather_with_grad(tensor, sizes)

    def gather_rows(self, tensor: Tensor, sizes: list) -> Tensor:
        """Every rank's rows of ``tensor`` (no gradient), in rank order, on every rank."""
        if not self.active:
            return tensor
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def sum(self, tensor: Tensor) -> Tensor:
        """Return the sum of ``tensor`` over ranks (no gradient), on every rank."""
        if not self.active:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            dist.barrier()


class _AllGather(torch.autograd.Function):
    """All-gather forward; backward sums every rank's gradient and keeps this rank's rows.

    Rank r's loss depends on the rows of every rank; the gradient of the total loss
    with respect to this rank's rows is the sum over ranks of each rank's gradient for
    them. A gather without this backward (``dist.all_gather`` alone) passes only the
    gradient of this rank's own loss: a silent bug of several contrastive code bases.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: tuple) -> Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(tensor: Tensor, sizes: list) -> Tensor:
    """Gather ``tensor`` from every rank (rank r holds ``sizes[r]`` rows), differentiably.

    Rows are padded to the largest size for the collective, so uneven shards work.
    """
    return _AllGather.apply(tensor, tuple(int(s) for s in sizes))


def resolve_group(distributed, device_param: str) -> tuple[Group, str]:
    """Turn the ``distributed`` parameter into a :class:`Group` and the device to use.

    ``"auto"``: distributed when a process group is initialised with more than one
    process, or torchrun's environment says ``WORLD_SIZE > 1`` (the group is then
    created: NCCL on CUDA, gloo on CPU). ``True``: the same, also for a single process,
    and an error when neither exists. ``False``: single-process. On CUDA each process
    uses the device ``cuda:LOCAL_RANK`` unless ``device`` names one.
    """
    if distributed is False:
        return Group(), device_param
    environment = int(os.environ.get("WORLD_SIZE", "1"))
    initialised = dist.is_available() and dist.is_initialized()
    if distributed == "auto" and not (
        (initialised and dist.get_world_size() > 1) or (not initialised and environment > 1)
    ):
        return Group(), device_param
    if not initialised:
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(
                "distributed=True needs a torch.distributed process group or torchrun's "
                "environment (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT); launch the script "
                "with `torchrun --nproc_per_node=N script.py`, or use distributed='auto'."
            )
        cuda = device_param != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = device_param
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.get_backend() == "nccl" and device_param in ("auto", "cuda"):
        device = f"cuda:{local_rank}"
    elif device_param == "auto" and dist.get_backend() != "nccl":
        device = "cpu"
    return Group(dist.get_rank(), dist.get_world_size()), device


def check_sync_batchnorm(sync_batchnorm: bool, group: Group) -> None:
    """Refuse ``sync_batchnorm=True`` outside a distributed fit on NCCL (several GPUs)."""
    if sync_batchnorm and not (group.active and dist.get_backend() == "nccl"):
        raise ValueError(
            "sync_batchnorm=True synchronises batch-norm statistics between GPUs and needs "
            "a distributed fit with the NCCL backend (torchrun on CUDA devices); this fit "
            + ("uses gloo on the CPU." if group.active else "runs in a single process.")
        )
