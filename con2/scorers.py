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
from sklearn import get_config
from sklearn.base import BaseEstimator
from torch import Tensor

from con2._compat import Interval, StrOptions

__all__ = ["SCORERS", "GaussianScorer", "NearestNeighborScorer", "Scorer", "resolve_scorer"]


@runtime_checkable
class Scorer(Protocol):
    """Score embeddings by how normal they are; higher = more normal.

    ``leave_one_out`` (optional class attribute, default False) says that
    ``score_samples`` honours ``exclude``: a query that is training image ``i`` must not
    be compared with itself.
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
    chunks of the bank sized to ``working_memory``.

    Parameters
    ----------
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

    _parameter_constraints: dict = {
        "bank_dtype": [StrOptions({"float32", "float16"})],
        "working_memory": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, bank_dtype="float32", working_memory=None):
        self.bank_dtype = bank_dtype
        self.working_memory = working_memory

    def fit(self, embeddings: Tensor) -> NearestNeighborScorer:
        """Store the training embeddings, shape (n_views, n_samples, embed_dim)."""
        self._validate_params()
        _check_embeddings(embeddings)
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
        _check_embeddings(embeddings, self.bank_)
        n_views, n_queries, dim = embeddings.shape
        n_bank = self.bank_.shape[1]
        # Similarities in float64: float32 products would depend in the last bits on how
        # many queries share a matrix product, and so would a score on its batch.
        budget = _budget(self.working_memory)
        bank_rows = max(1, min(n_bank, budget // (4 * dim)))
        query_rows = max(1, (budget - bank_rows * dim) // (bank_rows + dim))
        scores = torch.zeros(n_queries, dtype=torch.float64, device=embeddings.device)
        if exclude is not None:
            exclude = exclude.to(embeddings.device)  # once, not per chunk
        for view in range(n_views):
            for q0 in range(0, n_queries, query_rows):
                queries = embeddings[view, q0 : q0 + query_rows].double()
                part = None if exclude is None else exclude[q0 : q0 + query_rows]
                scores[q0 : q0 + query_rows] += self._best(view, queries, part, bank_rows)
        return scores / n_views

    def _best(self, view: int, queries: Tensor, exclude, bank_rows: int) -> Tensor:
        """Maximum similarity of each query to the bank of one view, chunk by chunk."""
        best = torch.full((len(queries),), -math.inf, dtype=torch.float64, device=queries.device)
        for start in range(0, self.bank_.shape[1], bank_rows):
            bank = self.bank_[view, start : start + bank_rows].to(queries.device, torch.float64)
            sims = queries @ bank.T  # (n_queries, bank_rows)
            if exclude is not None:
                _mask_excluded(sims, exclude, start, start + len(bank))
            best = torch.maximum(best, sims.amax(dim=1))
        return best


class GaussianScorer(BaseEstimator):
    """Gaussian log-likelihood under each view's training mean and covariance (S_LH).

    Memory is ``n_views * embed_dim**2`` whatever the number of training images. The
    covariance is shrunk towards a scaled identity (Ledoit-Wolf by default), because
    there are often fewer training images than dimensions, and stored as its Cholesky
    factor in float64; scoring is a triangular solve.

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
    """

    _parameter_constraints: dict = {
        "shrinkage": [StrOptions({"ledoit-wolf"}), Interval(Real, 0, 1, closed="both")],
    }

    def __init__(self, *, shrinkage="ledoit-wolf"):
        self.shrinkage = shrinkage

    def fit(self, embeddings: Tensor) -> GaussianScorer:
        """Fit a Gaussian per view on embeddings of shape (n_views, n_samples, embed_dim)."""
        self._validate_params()
        _check_embeddings(embeddings)
        means, choleskys, shrinkages = [], [], []
        for view in embeddings:  # one view at a time: float64 copies of one (n, d) block
            mean, cholesky, shrinkage = self._fit_view(view.double())
            means.append(mean), choleskys.append(cholesky), shrinkages.append(shrinkage)
        self.mean_ = torch.stack(means)
        self.cholesky_ = torch.stack(choleskys)
        self.shrinkage_ = torch.stack(shrinkages)
        return self

    def _fit_view(self, z: Tensor):
        n_samples = z.shape[0]
        mean = z.mean(dim=0)
        centered = z - mean
        emp_cov = centered.T @ centered / n_samples
        mu = torch.diagonal(emp_cov).mean()  # trace / dim
        if self.shrinkage == "ledoit-wolf":
            shrinkage = _ledoit_wolf_shrinkage(centered, emp_cov, mu)
        else:
            shrinkage = torch.tensor(float(self.shrinkage), dtype=z.dtype, device=z.device)
        cov = (1 - shrinkage) * emp_cov
        cov.diagonal().add_(shrinkage * mu)
        cholesky, info = torch.linalg.cholesky_ex(cov)
        if int(info) > 0:
            raise ValueError(
                "The covariance of the training embeddings is singular (are all training "
                "images identical?). Use shrinkage > 0 or the 'nnd' scorer."
            )
        return mean, cholesky, shrinkage

    def score_samples(self, embeddings: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Mean over views of the Gaussian log-density; ``exclude`` is ignored.

        Parameters
        ----------
        embeddings : Tensor of shape (n_views, n_samples, embed_dim)
        exclude : ignored
            The Gaussian statistics include every training image.

        Returns
        -------
        Tensor of shape (n_samples,), float64
        """
        _check_embeddings(embeddings, self.mean_)
        n_views, n_queries, dim = embeddings.shape
        device = embeddings.device
        chol = self.cholesky_.to(device)
        mean = self.mean_.to(device)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)
        rows = max(1, _budget(None) // (3 * dim))  # diff, its solve, and the float64 copy
        scores = torch.zeros(n_queries, dtype=torch.float64, device=device)
        for view in range(n_views):
            for q0 in range(0, n_queries, rows):
                diff = embeddings[view, q0 : q0 + rows].double() - mean[view]
                # y = L^-1 (z - mean); squared Mahalanobis distance = ||y||^2
                y = torch.linalg.solve_triangular(chol[view], diff.T, upper=False)
                mahalanobis = (y**2).sum(dim=0)
                log_density = -0.5 * (mahalanobis + logdet[view] + dim * math.log(2 * math.pi))
                scores[q0 : q0 + rows] += log_density
        return scores / n_views


def _ledoit_wolf_shrinkage(centered: Tensor, emp_cov: Tensor, mu: Tensor) -> Tensor:
    """Ledoit & Wolf (2004) optimal shrinkage towards ``mu * I``.

    With S the empirical covariance of n centred rows x_k in d dimensions and the
    Frobenius norm scaled by 1/d: delta = ||S - mu I||^2, beta = min(delta,
    (sum_k ||x_k||^4 - n ||S||^2) / n^2), shrinkage = beta / delta.
    """
    n_samples, dim = centered.shape
    off = emp_cov.clone()
    off.diagonal().sub_(mu)
    delta = (off**2).sum() / dim
    fourth = (centered**2).sum(dim=1).pow(2).sum()
    beta = (fourth - n_samples * (emp_cov**2).sum()) / (n_samples**2 * dim)
    beta = torch.minimum(beta, delta)
    return beta / delta if delta > 0 else torch.ones_like(delta)


SCORERS = {"nnd": NearestNeighborScorer, "lh": GaussianScorer}


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


def _check_embeddings(embeddings: Tensor, reference: Tensor | None = None) -> None:
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 3:
        raise ValueError(
            "embeddings must be a tensor of shape (n_views, n_samples, embed_dim); got "
            f"{getattr(embeddings, 'shape', type(embeddings).__name__)}."
        )
    if reference is not None:
        n_views, dim = reference.shape[0], reference.shape[-1]
        if embeddings.shape[0] != n_views or embeddings.shape[2] != dim:
            raise ValueError(
                f"embeddings have {embeddings.shape[0]} views of dimension "
                f"{embeddings.shape[2]}, but the scorer was fitted on {n_views} views of "
                f"dimension {dim}."
            )


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
