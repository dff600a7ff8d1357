"""Anomaly scorers on the embeddings of test-time views [1]_.

A scorer is fitted on the training embeddings of every test-time view, an array of shape
(n_views, n_samples, embed_dim) whose row ``[a, i]`` is the L2-normalised embedding of
view ``t_a`` of training image ``i``. It scores test embeddings of the same shape, view
by view against the same view of the training set, and averages over views.

**Sign.** The paper defines anomaly scores (higher = more anomalous). Scorers here return
their negation, *higher = more normal*, the scikit-learn convention of ``score_samples``;
this is the only place in the package where the sign is flipped.

References
----------
.. [1] Ryser et al., "Two Is Better Than One: Aligned Representation Pairs for Anomaly
   Detection", 2024, appendix B.2. https://arxiv.org/abs/2405.18848
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from sklearn import get_config
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from con2._compat import Interval, StrOptions

__all__ = [
    "SCORERS",
    "CSIHead",
    "CSIScorer",
    "GaussianHead",
    "GaussianScorer",
    "NearestNeighborHead",
    "NearestNeighborScorer",
    "Scorer",
    "resolve_scorer",
]


@runtime_checkable
class Scorer(Protocol):
    """Score embeddings by how normal they are; higher = more normal.

    ``leave_one_out`` (optional class attribute, default False) says that
    ``score_samples`` honours ``exclude``: a query that is training image ``i`` must not
    be compared with itself. ``memory_bank`` (optional, default False) says that the
    scorer keeps the training embeddings themselves (its state grows with the data);
    otherwise the detector may hand ``fit`` embeddings that live in a temporary file.
    ``heads`` (optional, default None) names the objective's heads whose outputs, side by
    side and unnormalised, the scorer takes instead of the L2-normalised backbone
    features (:class:`CSIScorer`: the projection and the rotation logits).
    ``min_samples`` (optional, default 2) is the fewest training images the scorer can
    fit: the detector refuses a smaller training set before training.
    """

    def fit(self, embeddings: Tensor) -> Scorer:
        """Fit on training embeddings of shape (n_views, n_samples, embed_dim)."""

    def score_samples(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Return float64 scores of shape (n_samples,) for embeddings like ``fit``'s.

        ``exclude`` (shape (n_samples,), long) names for each query the training index to
        leave out, or -1 for none.
        """


class NearestNeighborScorer(BaseEstimator):
    """Cosine similarity to the nearest training embedding, averaged over views (S_NND).

    Keeps a memory bank of all training embeddings, one per view: memory grows as
    ``n_views * n_samples * embed_dim``. The search is exact, by matrix products over
    chunks of the bank, a chunk of queries at a time sized to ``working_memory``. With
    ``n_neighbors=k`` a view's score is the mean cosine similarity to its ``k`` nearest
    training embeddings (FIRM scores with ``k=5``).

    Parameters
    ----------
    n_neighbors : int, default=1
        Nearest training embeddings whose similarities are averaged.
    bank_dtype : {"float32", "float16"}, default="float32"
        Storage type of the memory bank; float16 halves its memory.
    working_memory : int, default=None
        Megabytes of similarity matrix computed at once; scikit-learn's
        ``working_memory`` setting (1024 by default) when None.

    Attributes
    ----------
    bank_ : Tensor of shape (n_views, n_samples, embed_dim)
        The training embeddings.

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> bank = F.normalize(torch.randn(2, 50, 8), dim=2)
    >>> scorer = NearestNeighborScorer().fit(bank)
    >>> scorer.score_samples(bank).round(decimals=4).unique().tolist()  # own match: 1
    [1.0]
    """

    leave_one_out = True
    memory_bank = True  # keeps every training embedding

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "bank_dtype": [StrOptions({"float32", "float16"})],
        "working_memory": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, n_neighbors=1, bank_dtype="float32", working_memory=None):
        self.n_neighbors = n_neighbors
        self.bank_dtype = bank_dtype
        self.working_memory = working_memory

    @property
    def min_samples(self) -> int:
        """Return ``n_neighbors + 1``: a training image is left out of its own score."""
        self._validate_params()
        return self.n_neighbors + 1

    def fit(self, embeddings: Tensor) -> NearestNeighborScorer:
        """Store the training embeddings, shape (n_views, n_samples, embed_dim)."""
        self._validate_params()
        _check_embeddings(embeddings)
        if embeddings.shape[1] < self.n_neighbors + 1:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} needs more than {self.n_neighbors} training "
                f"images (one is left out of its own score); got {embeddings.shape[1]}."
            )
        self.bank_ = embeddings.to(getattr(torch, self.bank_dtype)).contiguous()
        return self

    def score_samples(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Mean over views of the maximum cosine similarity to that view's bank.

        Parameters
        ----------
        embeddings : Tensor of shape (n_views, n_samples, embed_dim)
        exclude : Tensor of shape (n_samples,), long, default=None
            Training index to leave out for each query (-1 for none).

        Returns
        -------
        Tensor of shape (n_samples,), float64
        """
        _check_embeddings(embeddings, (self.bank_.shape[0], self.bank_.shape[2]))
        head = self.head()
        # queries per call: their similarities to one bank chunk fit in working_memory
        rows = max(1, _budget(self.working_memory) // (head.chunk_rows + embeddings.shape[2]))
        if exclude is not None:
            exclude = exclude.to(embeddings.device)  # once, not per chunk
        parts = [
            head(
                embeddings[:, q0 : q0 + rows], None if exclude is None else exclude[q0 : q0 + rows]
            )
            for q0 in range(0, embeddings.shape[1], rows)
        ]
        return torch.cat(parts)

    def head(self) -> NearestNeighborHead:
        """Return the scoring function as a module without loops over queries (exportable)."""
        return NearestNeighborHead(self.bank_, n_neighbors=self.n_neighbors)


class NearestNeighborHead(nn.Module):
    """Mean over views of the mean cosine similarity to the nearest bank rows of that view.

    Loops only over the views and over fixed chunks of ``chunk_rows`` bank rows, never over
    queries, so the same code scores in Python (the caller chunks the queries) and exports
    with a dynamic batch. Similarities are float64: float32 products would depend in the
    last bits on how many queries share a matrix product, and so would a score on its
    batch.

    Parameters
    ----------
    bank : Tensor of shape (n_views, n_bank, embed_dim)
        Shared, not copied.
    chunk_rows : int, default=4096
        Bank rows per matrix product.
    n_neighbors : int, default=1
        Nearest bank rows averaged.
    """

    def __init__(self, bank: Tensor, chunk_rows: int = 4096, n_neighbors: int = 1):
        super().__init__()
        self.register_buffer("bank", bank, persistent=False)
        self.chunk_rows = chunk_rows
        self.n_neighbors = n_neighbors

    def forward(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Scores (n_queries,), float64, of embeddings (n_views, n_queries, embed_dim).

        ``exclude[q]`` names a bank index query ``q`` may not match (-1: none).
        """
        n_views, n_bank = self.bank.shape[:2]
        total = None
        for view in range(n_views):
            queries = embeddings[view].double()
            best = None
            for start in range(0, n_bank, self.chunk_rows):
                chunk = self.bank[view, start : start + self.chunk_rows].to(queries)
                sims = queries @ chunk.T  # (n_queries, chunk_rows)
                if exclude is not None:
                    _mask_excluded(sims, exclude, start, start + chunk.shape[0])
                best = _nearest(sims, best, self.n_neighbors)
            score = best if self.n_neighbors == 1 else best.mean(dim=1)
            total = score if total is None else total + score
        return total / n_views


def _nearest(sims: Tensor, best: Tensor | None, k: int) -> Tensor:
    """Merge a chunk's similarities into the best so far: the maximum, or the top ``k``."""
    if k == 1:
        nearest = sims.amax(dim=1)
        return nearest if best is None else torch.maximum(best, nearest)
    candidates = sims if best is None else torch.cat([best, sims], dim=1)
    return candidates.topk(min(k, candidates.shape[1]), dim=1).values


class GaussianScorer(BaseEstimator):
    """Gaussian log-likelihood under each view's training mean and covariance (S_LH).

    Memory is ``n_views * embed_dim**2`` whatever the number of training images. The
    covariance is shrunk towards a scaled identity (Ledoit-Wolf by default), because
    there are often fewer training images than dimensions, and stored as its Cholesky
    factor in float64; scoring is a triangular solve.

    A query that is training image ``i`` (``exclude[q] = i``) is scored leave-one-out:
    under the mean and covariance of the other ``n - 1`` images, with the shrinkage held
    at its full-data value. Removing one image is a rank-one change of the covariance,
    so this is exact and costs one eigendecomposition per view, not a refit per image.
    In-sample scores of training images are optimistic (each image pulled its own mean
    and covariance towards it), and a threshold taken from them flags more new normal
    images than it promises.

    Parameters
    ----------
    shrinkage : "ledoit-wolf" or float in [0, 1], default="ledoit-wolf"
        Weight of the scaled identity in the covariance.

    Attributes
    ----------
    mean_ : Tensor of shape (n_views, embed_dim), float64
    cholesky_ : Tensor of shape (n_views, embed_dim, embed_dim), float64
        Lower Cholesky factor of each view's shrunk covariance.
    shrinkage_ : Tensor of shape (n_views,), float64
        The shrinkage used for each view.
    scale_ : Tensor of shape (n_views,), float64
        Mean variance (trace / embed_dim) of each view's empirical covariance, the scale
        of the identity it is shrunk towards.
    n_samples_ : int
        Number of training embeddings.
    """

    leave_one_out = True

    _parameter_constraints: dict = {
        "shrinkage": [StrOptions({"ledoit-wolf"}), Interval(Real, 0, 1, closed="both")],
    }

    def __init__(self, *, shrinkage="ledoit-wolf"):
        self.shrinkage = shrinkage

    @property
    def min_samples(self) -> int:
        """Return 3 with Ledoit-Wolf shrinkage (which two images leave at 0), else 2."""
        self._validate_params()
        return 3 if self.shrinkage == "ledoit-wolf" else 2

    def fit(self, embeddings: Tensor) -> GaussianScorer:
        """Fit a Gaussian per view on embeddings of shape (n_views, n_samples, embed_dim).

        One view at a time, and within a view in chunks of samples sized to
        scikit-learn's ``working_memory``: the float64 working set does not grow with
        ``n_samples``, so ``embeddings`` may be a tensor backed by a file on disk.
        """
        self._validate_params()
        _check_embeddings(embeddings)
        fitted = [self._fit_view(view) for view in embeddings]
        self.mean_, self.cholesky_, self.shrinkage_, self.scale_ = (
            torch.stack(values) for values in zip(*fitted, strict=True)
        )
        self.n_samples_ = int(embeddings.shape[1])
        return self

    def _fit_view(self, view: Tensor):
        n_samples = view.shape[0]
        mean, emp_cov, fourth = _moments(view, _rows(2 * view.shape[1]))
        mu = torch.diagonal(emp_cov).mean()  # trace / dim
        if self.shrinkage == "ledoit-wolf":
            shrinkage = _ledoit_wolf_shrinkage(emp_cov, mu, fourth, n_samples)
        else:
            shrinkage = torch.tensor(float(self.shrinkage), dtype=mean.dtype, device=mean.device)
        cov = (1 - shrinkage) * emp_cov
        cov.diagonal().add_(shrinkage * mu)
        cholesky, info = torch.linalg.cholesky_ex(cov)
        if int(info) > 0:
            raise ValueError(
                "The covariance of the training embeddings is singular (are all training "
                "images identical?). Use shrinkage > 0 or the 'nnd' scorer."
            )
        return mean, cholesky, shrinkage, mu

    def score_samples(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Mean over views of the Gaussian log-density.

        Parameters
        ----------
        embeddings : Tensor of shape (n_views, n_samples, embed_dim)
        exclude : Tensor of shape (n_samples,), long, default=None
            ``exclude[q] >= 0`` says that query ``q`` is that training image: it is
            scored leave-one-out (the index itself is not needed, the query is the image).

        Returns
        -------
        Tensor of shape (n_samples,), float64
        """
        if exclude is None:
            return self._score_new(embeddings)
        left_out = exclude.to(embeddings.device) >= 0
        if bool(left_out.all()):  # training scores: no copy of (possibly on-disk) embeddings
            return self._score_left_out(embeddings)
        scores = self._score_new(embeddings)
        if bool(left_out.any()):
            scores[left_out] = self._score_left_out(embeddings[:, left_out])
        return scores

    def _score_new(self, embeddings: Tensor) -> Tensor:
        _check_embeddings(embeddings, (self.mean_.shape[0], self.mean_.shape[-1]))
        head = self.head().to(embeddings.device)
        rows = _rows(3 * embeddings.shape[2])  # diff, its product, and the float64 copy
        return torch.cat([head(embeddings[:, q0 : q0 + rows])
                          for q0 in range(0, embeddings.shape[1], rows)])  # fmt: skip

    def head(self) -> GaussianHead:
        """Return the scoring function as a module without loops over queries (exportable)."""
        identity = torch.eye(self.cholesky_.shape[-1], dtype=self.cholesky_.dtype,
                             device=self.cholesky_.device).expand_as(self.cholesky_)  # fmt: skip
        inverse = torch.linalg.solve_triangular(self.cholesky_, identity, upper=False)
        logdet = 2 * torch.log(torch.diagonal(self.cholesky_, dim1=1, dim2=2)).sum(dim=1)
        return GaussianHead(self.mean_, inverse, logdet)

    def _score_left_out(self, embeddings: Tensor) -> Tensor:
        """Leave-one-out scores of training embeddings, shape (n_views, n_queries, dim)."""
        _check_embeddings(embeddings, (self.mean_.shape[0], self.mean_.shape[-1]))
        n_views, n_queries, dim = embeddings.shape
        if self.n_samples_ < 3:
            raise ValueError("Leave-one-out scores need at least 3 training images.")
        device = embeddings.device
        rows = _rows(4 * dim)
        scores = torch.zeros(n_queries, dtype=torch.float64, device=device)
        for view in range(n_views):
            cholesky = self.cholesky_[view].to(device)
            eigen = torch.linalg.eigh(cholesky @ cholesky.T)  # once per view
            statistics = (self.mean_[view].to(device), eigen, float(self.shrinkage_[view]),
                          float(self.scale_[view]), self.n_samples_)  # fmt: skip
            for q0 in range(0, n_queries, rows):
                z = embeddings[view, q0 : q0 + rows].to(device, torch.float64)
                scores[q0 : q0 + rows] += _left_out_log_density(z, *statistics)
        return scores / n_views


class GaussianHead(nn.Module):
    """Mean over views of the Gaussian log-density, by a stored inverse Cholesky factor.

    ``y = L^-1 (z - mean)`` is a matrix product with the inverse factor (a triangular solve
    has no ONNX form; the two agree to about 1e-14), and the squared Mahalanobis distance
    is ``||y||^2``. Loops only over views, never over queries.

    Parameters
    ----------
    mean : Tensor of shape (n_views, embed_dim), float64
    inverse_cholesky : Tensor of shape (n_views, embed_dim, embed_dim), float64
    logdet : Tensor of shape (n_views,), float64
        Log-determinant of each view's covariance.
    """

    def __init__(self, mean: Tensor, inverse_cholesky: Tensor, logdet: Tensor):
        super().__init__()
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inverse_cholesky", inverse_cholesky, persistent=False)
        self.register_buffer("logdet", logdet, persistent=False)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Scores (n_queries,), float64, of embeddings (n_views, n_queries, embed_dim)."""
        n_views, _, dim = embeddings.shape
        constant = dim * math.log(2 * math.pi)
        total = None
        for view in range(n_views):
            diff = embeddings[view].double() - self.mean[view]
            y = diff @ self.inverse_cholesky[view].T
            log_density = -0.5 * ((y**2).sum(dim=1) + self.logdet[view] + constant)
            total = log_density if total is None else total + log_density
        return total / n_views


def _left_out_log_density(z, mean, eigen, shrinkage, scale, n_samples):
    """Log-density of each training embedding under the Gaussian fitted without it.

    ``z`` (n_queries, dim) are training embeddings of one view, in float64; ``eigen`` the
    eigendecomposition of the view's shrunk covariance. With C the empirical
    covariance, c = z - mean and n samples, leaving z out gives the mean
    ``mean - c / (n - 1)`` and the empirical covariance ``n/(n-1) C - n/(n-1)^2 c c^T``.
    Shrunk with the same weight s towards its own scale, the covariance is
    ``A - g c c^T`` with A diagonal in C's eigenbasis and g = (1 - s) n / (n - 1)^2, so
    Sherman-Morrison and the matrix determinant lemma give the exact score in O(dim)
    per query after one eigendecomposition.
    """
    n, dim = n_samples, z.shape[1]
    eigenvalues, eigenvectors = eigen
    s = shrinkage
    # eigenvalues of C from those of (1 - s) C + s * scale * I
    lam = (eigenvalues - s * scale) / (1 - s) if s < 1 else torch.zeros_like(eigenvalues)
    c = z - mean
    ratio = n / (n - 1)
    scale_out = ratio * scale - ratio / (n - 1) * (c**2).sum(dim=1) / dim  # trace / dim
    diagonal = (1 - s) * ratio * lam + (s * scale_out)[:, None]  # (n_queries, dim)
    q = ((c @ eigenvectors) ** 2 / diagonal).sum(dim=1)  # c^T A^-1 c
    g_q = (1 - s) * ratio / (n - 1) * q
    mahalanobis = ratio**2 * q / (1 - g_q)  # of z - mean_out = ratio * c
    logdet = torch.log(diagonal).sum(dim=1) + torch.log1p(-g_q)
    return -0.5 * (mahalanobis + logdet + dim * math.log(2 * math.pi))


def _moments(view: Tensor, rows: int):
    """Mean, empirical covariance and sum of ||x - mean||^4 of one view, in float64.

    In one piece when the view fits in ``rows`` rows, else in two passes over chunks of
    ``rows`` samples (a mean, then centred sums), reading the view a chunk at a time.
    """
    n_samples = view.shape[0]
    if n_samples <= rows:
        z = view.double()
        mean = z.mean(dim=0)
        centered = z - mean
        fourth = (centered**2).sum(dim=1).pow(2).sum()
        return mean, centered.T @ centered / n_samples, fourth
    device = view.device
    total = torch.zeros(view.shape[1], dtype=torch.float64, device=device)
    for start in range(0, n_samples, rows):
        total += view[start : start + rows].to(device, torch.float64).sum(dim=0)
    mean = total / n_samples
    scatter = torch.zeros(view.shape[1], view.shape[1], dtype=torch.float64, device=device)
    fourth = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n_samples, rows):
        centered = view[start : start + rows].to(device, torch.float64) - mean
        scatter += centered.T @ centered
        fourth += (centered**2).sum(dim=1).pow(2).sum()
    return mean, scatter / n_samples, fourth


def _ledoit_wolf_shrinkage(emp_cov: Tensor, mu: Tensor, fourth: Tensor, n_samples: int) -> Tensor:
    """Ledoit & Wolf (2004) optimal shrinkage towards ``mu * I``.

    With S the empirical covariance of n centred rows x_k in d dimensions and the
    Frobenius norm scaled by 1/d: delta = ||S - mu I||^2, beta = min(delta,
    (sum_k ||x_k||^4 - n ||S||^2) / n^2), shrinkage = beta / delta; ``fourth`` is
    sum_k ||x_k||^4.
    """
    dim = emp_cov.shape[0]
    off = emp_cov.clone()
    off.diagonal().sub_(mu)
    delta = (off**2).sum() / dim
    beta = (fourth - n_samples * (emp_cov**2).sum()) / (n_samples**2 * dim)
    beta = torch.minimum(beta, delta)
    return beta / delta if delta > 0 else torch.ones_like(delta)


class CSIScorer(BaseEstimator):
    """CSI's score: norm-weighted nearest cosine plus the rotation head's confidence.

    For a model trained with :class:`con2.objectives.CSIObjective`, whose test-time
    views are split evenly over the ``n_shifts`` rotations in order. For each rotation
    ``k``, with ``f`` the unnormalised projection and ``g`` the rotation logits of an
    image, each averaged over the views of rotation ``k``: ``max_n <f, axis_k[n]> /
    mean_n ||f_n||`` (the cosine to the nearest training projection, weighted by the
    query's norm, over the training set's mean norm) plus ``g[k] / mean_n g_n[k]`` (the
    logit of the right rotation over its training mean); the score is the mean over ``k``.
    Higher = more normal, as CSI's own score. A training image is scored without itself.

    Parameters
    ----------
    n_shifts : int, default=4
        Rotations (0, 90, 180, 270 degrees), the last ``n_shifts`` feature columns.

    Attributes
    ----------
    axis_ : Tensor of shape (n_shifts, n_samples, proj_dim)
        Normalised training projections per rotation (views averaged).
    weight_sim_ : Tensor of shape (n_shifts,), float64
        One over the mean norm of the training projections of each rotation.
    weight_shift_ : Tensor of shape (n_shifts,), float64
        One over the mean training logit of each rotation for itself.
    n_views_ : int
        Test-time views per image it was fitted on (scored embeddings must match).

    References
    ----------
    Tack et al., "CSI: Novelty Detection via Contrastive Learning on Distributionally
    Shifted Instances", NeurIPS 2020, section 3.2. https://arxiv.org/abs/2007.08176
    """

    heads = ("content", "rotation")  # features: the projection, then the rotation logits
    leave_one_out = True
    memory_bank = True

    _parameter_constraints: dict = {"n_shifts": [Interval(Integral, 2, None, closed="left")]}

    def __init__(self, *, n_shifts=4):
        self.n_shifts = n_shifts

    def fit(self, embeddings: Tensor) -> CSIScorer:
        """Fit on features (n_views, n_samples, proj_dim + n_shifts) of the training images."""
        self._validate_params()
        _check_embeddings(embeddings)
        projections, own = _per_shift(embeddings, self.n_shifts)
        self.n_views_ = embeddings.shape[0]
        self.axis_ = F.normalize(projections, dim=2).float()
        self.weight_sim_ = 1.0 / projections.norm(dim=2).mean(dim=1)
        self.weight_shift_ = 1.0 / own.mean(dim=1)
        return self

    def score_samples(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Return CSI's score of each image, float64, shape (n_samples,).

        ``exclude`` as for :class:`NearestNeighborScorer`; queries in chunks sized to
        scikit-learn's ``working_memory``.
        """
        dim = self.axis_.shape[2] + self.n_shifts  # the projection and the logits
        _check_embeddings(embeddings, (getattr(self, "n_views_", embeddings.shape[0]), dim))
        head = self.head()
        rows = max(1, _budget(None) // (head.chunk_rows + embeddings.shape[2]))
        if exclude is not None:
            exclude = exclude.to(embeddings.device)
        parts = [head(embeddings[:, q0 : q0 + rows],
                      None if exclude is None else exclude[q0 : q0 + rows])
                 for q0 in range(0, embeddings.shape[1], rows)]  # fmt: skip
        return torch.cat(parts)

    def head(self) -> CSIHead:
        """Return the scoring function as a module without loops over queries (exportable)."""
        return CSIHead(self.axis_, self.weight_sim_, self.weight_shift_)


class CSIHead(nn.Module):
    """CSI's score of features (n_views, n_queries, proj_dim + n_shifts), float64.

    Loops over rotations and fixed chunks of bank rows only, never over queries.

    Parameters
    ----------
    axis : Tensor of shape (n_shifts, n_bank, proj_dim)
    weight_sim, weight_shift : Tensor of shape (n_shifts,), float64
    chunk_rows : int, default=4096
        Bank rows per matrix product.
    """

    def __init__(self, axis: Tensor, weight_sim: Tensor, weight_shift: Tensor,
                 chunk_rows: int = 4096):  # fmt: skip
        super().__init__()
        self.register_buffer("axis", axis, persistent=False)
        self.register_buffer("weight_sim", weight_sim, persistent=False)
        self.register_buffer("weight_shift", weight_shift, persistent=False)
        self.chunk_rows = chunk_rows

    def forward(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Scores (n_queries,); ``exclude[q]`` names a bank row query ``q`` may not match."""
        n_shifts, n_bank = self.axis.shape[:2]
        projections, own = _per_shift(embeddings, n_shifts)
        total = None
        for k in range(n_shifts):
            best = None
            for start in range(0, n_bank, self.chunk_rows):
                chunk = self.axis[k, start : start + self.chunk_rows].to(projections)
                sims = projections[k] @ chunk.T  # norm x cosine, (n_queries, chunk_rows)
                if exclude is not None:
                    _mask_excluded(sims, exclude, start, start + chunk.shape[0])
                best = _nearest(sims, best, 1)
            score = best * self.weight_sim[k] + own[k] * self.weight_shift[k]
            total = score if total is None else total + score
        return total / n_shifts


def _per_shift(embeddings: Tensor, n_shifts: int) -> tuple[Tensor, Tensor]:
    """Projections (n_shifts, n, proj_dim) and own-rotation logits (n_shifts, n), float64.

    Views are split evenly over the rotations in order (as the detector draws them):
    view ``a`` of ``n_views`` has rotation ``a * n_shifts // n_views``; each rotation's
    features are averaged over its views (CSI's ensemble).
    """
    n_views = embeddings.shape[0]
    if n_views < n_shifts:
        raise ValueError(
            f"CSI's score needs at least one test-time view per rotation; got {n_views} "
            f"views for {n_shifts} rotations."
        )
    bounds = [-(-k * n_views // n_shifts) for k in range(n_shifts + 1)]  # ceil(k A / K)
    means = torch.stack([embeddings[bounds[k] : bounds[k + 1]].double().mean(dim=0)
                         for k in range(n_shifts)])  # fmt: skip
    own = torch.stack([means[k, :, means.shape[2] - n_shifts + k] for k in range(n_shifts)])
    return means[:, :, : means.shape[2] - n_shifts], own


SCORERS = {"nnd": NearestNeighborScorer, "lh": GaussianScorer, "csi": CSIScorer}


def resolve_scorer(scorer) -> Scorer:
    """Return a fresh, unfitted scorer for the ``scorer`` parameter."""
    from sklearn.base import clone

    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise ValueError(
                f"Unknown scorer {scorer!r}; choose one of {sorted(SCORERS)} or pass a scorer "
                "object with fit(embeddings) and score_samples(embeddings, exclude=None)."
            )
        return SCORERS[scorer]()
    if isinstance(scorer, Scorer) and not isinstance(scorer, type):
        return clone(scorer, safe=False)
    raise TypeError(
        "scorer must be 'nnd', 'lh' or an object with fit(embeddings) and "
        f"score_samples(embeddings, exclude=None); got {scorer!r}."
    )


def _check_embeddings(embeddings: Tensor, fitted: tuple | None = None) -> None:
    """Refuse all but (n_views, n_samples, embed_dim) matching the ``fitted`` (n_views, dim)."""
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 3:
        raise ValueError(
            "embeddings must be a tensor of shape (n_views, n_samples, embed_dim); got "
            f"{getattr(embeddings, 'shape', type(embeddings).__name__)}."
        )
    if fitted is not None:
        n_views, dim = fitted
        if embeddings.shape[0] != n_views or embeddings.shape[2] != dim:
            raise ValueError(
                f"embeddings have {embeddings.shape[0]} views of dimension "
                f"{embeddings.shape[2]}, but the scorer was fitted on {n_views} views of "
                f"dimension {dim}."
            )


def _rows(values_per_row: int) -> int:
    """Rows per chunk of the Gaussian scorer: within ``working_memory``, at most 4096.

    The cap keeps the working set of fitting and scoring independent of the number of
    samples long before ``working_memory`` (1 GiB by default) is reached; per-row work
    is a matrix product either way, so small chunks cost nothing measurable.
    """
    return max(1, min(_MAX_ROWS, _budget(None) // values_per_row))


_MAX_ROWS = 4096


def _budget(working_memory) -> int:
    """Return how many float64 values fit in ``working_memory`` megabytes.

    None means scikit-learn's ``working_memory`` setting (1024 by default).
    """
    megabytes = working_memory or get_config()["working_memory"]
    return max(1, int(megabytes * 2**20 // 8))


def _mask_excluded(sims: Tensor, exclude: Tensor, start: int, stop: int) -> None:
    """Set ``sims[q, exclude[q] - start]`` to -inf where the excluded index is in the chunk."""
    inside = (exclude >= start) & (exclude < stop)
    rows = torch.arange(len(exclude), device=sims.device)
    column = (exclude - start).clamp(0, sims.shape[1] - 1)
    sims[rows, column] = torch.where(inside, -math.inf, sims[rows, column])
