"""Building blocks of the training objectives (:mod:`con2.objectives`).

With cosine similarities ``s`` between projected views, temperature ``tau`` and

    l(i, j) = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) ),

:func:`supcon_loss` is the supervised contrastive loss [1]_: the mean over anchors ``i``
of the mean of ``l(i, j)`` over the positives ``j`` of ``i`` (the views sharing its
label). With context labels it is Con2's context contrasting [2]_, with image labels its
content alignment and SimCLR's instance discrimination.

References
----------
.. [1] Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
   https://arxiv.org/abs/2004.11362
.. [2] Ryser et al., "Two Is Better Than One: Aligned Representation Pairs for Anomaly
   Detection", 2024, section 2.2 and appendix B.1. https://arxiv.org/abs/2405.18848
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["supcon_loss"]


def supcon_loss(
    z: Tensor, labels: Tensor, temperature: float, anchors: slice | None = None
) -> Tensor:
    """Supervised contrastive loss with the "mean over positives" normalisation.

    Parameters
    ----------
    z : Tensor of shape (n_views, proj_dim)
        L2-normalised projections.
    labels : Tensor of shape (n_views,), long
        In ``[0, n_views)``; views with equal labels are positives of each other. Every
        view needs at least one positive.
    temperature : float
        Softmax temperature ``tau``.
    anchors : slice, default=None
        The views whose loss terms to sum (None: all); every view is still a positive
        or negative of every anchor. Used by data-parallel training, where each process
        holds the anchors of its own images and the views of every process.

    Returns
    -------
    Tensor of shape ()
        The sum of the anchors' terms divided by ``n_views``: the mean over all anchors
        when ``anchors`` is None. In float32 for half-precision ``z`` (safe under bf16
        autocast), else in the dtype of ``z``.
    """
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    anchors = anchors if anchors is not None else slice(0, len(z))
    z_anchor, anchor_labels = z[anchors], labels[anchors]
    # Denominator: log-sum-exp over k != i of s_ik / tau, the anchor itself masked out.
    logits = (z_anchor / temperature) @ z.T
    rows = torch.arange(logits.shape[0], device=z.device)
    itself = (rows + anchors.start)[:, None] == torch.arange(len(z), device=z.device)[None, :]
    logits = logits.masked_fill(itself, -math.inf)
    log_denominator = torch.logsumexp(logits, dim=1)
    # Numerator, averaged over positives, without an (n_views, n_views) mask: the sum of
    # z_j over the positives of i is its label's sum of z minus z_i itself.
    # Labels index rows of (n_views, ...) buffers: every label is below n_views, and no
    # host synchronisation is needed to learn how many labels there are.
    label_sums = z.new_zeros(z.shape).index_add_(0, labels, z)
    label_counts = z.new_zeros(len(z)).index_add_(0, labels, z.new_ones(len(z)))
    counts = label_counts.index_select(0, anchor_labels) - 1
    positive_sums = label_sums.index_select(0, anchor_labels) - z_anchor  # backward: one index_add
    mean_positive_logit = (z_anchor * positive_sums).sum(dim=1) / (temperature * counts)
    return (log_denominator - mean_positive_logit).sum() / len(z)
