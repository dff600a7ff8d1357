import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from con2.scorers import (
    CSIHead,
    CSIScorer,
    GaussianScorer,
    NearestNeighborHead,
    NearestNeighborScorer,
    Scorer,
    resolve_scorer,
)


def embeddings(n_views, n_samples, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n_views, n_samples, dim, generator=gen), dim=2)


def test_nnd_matches_sklearn_cosine_nearest_neighbors():
    train, test = embeddings(3, 200, 16, 0), embeddings(3, 50, 16, 1)
    scores = NearestNeighborScorer().fit(train).score_samples(test)

    expected = np.zeros(50)
    for view in range(3):
        nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(train[view].numpy())
        distance, _ = nn.kneighbors(test[view].numpy())
        expected += (1 - distance[:, 0]) / 3  # cosine similarity = 1 - cosine distance
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)


def test_nnd_leave_one_out_matches_second_neighbour():
    train = embeddings(2, 120, 8, 2)
    scorer = NearestNeighborScorer().fit(train)
    scores = scorer.score_samples(train, exclude=torch.arange(120))

    expected = np.zeros(120)
    for view in range(2):
        nn = NearestNeighbors(n_neighbors=2, metric="cosine").fit(train[view].numpy())
        distance, index = nn.kneighbors(train[view].numpy())
        assert (index[:, 0] == np.arange(120)).all()  # the first neighbour is itself
        expected += (1 - distance[:, 1]) / 2
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)
    # without exclusion every training point finds itself
    np.testing.assert_allclose(scorer.score_samples(train).numpy(), 1.0, atol=1e-6)


def test_nnd_chunking_of_queries_gives_the_same_scores():
    train, test = embeddings(2, 3000, 32, 3), embeddings(2, 700, 32, 4)
    exclude = torch.randint(-1, 3000, (700,))
    whole = NearestNeighborScorer(working_memory=1024).fit(train).score_samples(test, exclude)
    # 1 MB of float64 similarities per chunk: the queries go 31 at a time
    chunked = NearestNeighborScorer(working_memory=1).fit(train).score_samples(test, exclude)
    np.testing.assert_allclose(whole, chunked, rtol=0, atol=1e-12)  # float64 rounding only


@pytest.mark.parametrize("n_neighbors", [1, 5])
def test_nnd_head_merges_chunks_of_the_bank_like_one_search(n_neighbors):
    """Chunks of 7 bank rows, excluded rows in every chunk: the top k across chunks."""
    train, test = embeddings(3, 60, 8, 21), embeddings(3, 40, 8, 22)
    exclude = torch.arange(40) * 3 % 61 - 1  # -1 (none) and rows all over the bank
    head = NearestNeighborHead(train, chunk_rows=7, n_neighbors=n_neighbors)
    expected = naive_nnd(train, test, exclude, n_neighbors)
    np.testing.assert_allclose(head(test, exclude), expected, rtol=0, atol=1e-12)


def test_nnd_float16_bank_is_close_and_half_the_size():
    train, test = embeddings(2, 300, 64, 5), embeddings(2, 40, 64, 6)
    full = NearestNeighborScorer().fit(train)
    half = NearestNeighborScorer(bank_dtype="float16").fit(train)
    assert half.bank_.dtype == torch.float16 and full.bank_.dtype == torch.float32
    # float16 keeps 11 bits: 5e-5 here (a bfloat16 bank, with 8, is off by 4e-4)
    np.testing.assert_allclose(half.score_samples(test), full.score_samples(test), atol=2e-4)


def test_gaussian_matches_ledoit_wolf_and_scipy_log_density():
    train, test = embeddings(2, 60, 24, 7), embeddings(2, 30, 24, 8)  # fewer images than 2 * dim
    scores = GaussianScorer().fit(train).score_samples(test)

    expected = np.zeros(30)
    for view in range(2):
        lw = LedoitWolf().fit(train[view].double().numpy())
        density = multivariate_normal(mean=lw.location_, cov=lw.covariance_)
        expected += density.logpdf(test[view].double().numpy()) / 2
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9)


def test_gaussian_fixed_shrinkage_and_state_independent_of_n_samples():
    small = GaussianScorer(shrinkage=0.1).fit(embeddings(3, 50, 16, 9))
    large = GaussianScorer(shrinkage=0.1).fit(embeddings(3, 5000, 16, 9))
    for name in ("mean_", "cholesky_", "shrinkage_"):
        assert getattr(small, name).shape == getattr(large, name).shape
    assert torch.equal(small.shrinkage_, torch.full((3,), 0.1, dtype=torch.float64))


def test_gaussian_prefers_points_near_the_mean():
    train = embeddings(1, 500, 8, 10)
    scorer = GaussianScorer().fit(train)
    centre = scorer.mean_.float()[:, None]
    far = -centre
    assert scorer.score_samples(centre) > scorer.score_samples(far)


@pytest.mark.parametrize("scorer", [NearestNeighborScorer(), GaussianScorer(),
                                    CSIScorer(n_shifts=2)])  # fmt: skip
def test_scorers_reject_mismatched_embeddings(scorer):
    scorer.fit(embeddings(2, 20, 8, 11))
    with pytest.raises(ValueError, match="fitted on 2 views of dimension 8"):
        scorer.score_samples(embeddings(3, 5, 8, 12))
    with pytest.raises(ValueError, match="fitted on 2 views of dimension 8"):
        scorer.score_samples(embeddings(2, 5, 12, 12))
    with pytest.raises(ValueError, match="n_views, n_samples, embed_dim"):
        scorer.score_samples(torch.zeros(5, 8))


def test_gaussian_refuses_identical_embeddings_with_a_clear_error():
    same = F.normalize(torch.ones(1, 10, 4), dim=2)
    with pytest.raises(ValueError, match="singular"):
        GaussianScorer().fit(same)


def test_resolve_scorer_names_objects_and_errors():
    assert isinstance(resolve_scorer("nnd"), NearestNeighborScorer)
    assert isinstance(resolve_scorer("lh"), GaussianScorer)
    given = NearestNeighborScorer(bank_dtype="float16")
    resolved = resolve_scorer(given)
    assert resolved is not given and resolved.get_params() == given.get_params()
    with pytest.raises(ValueError, match="Unknown scorer 'knn'"):
        resolve_scorer("knn")
    with pytest.raises(TypeError, match="scorer must be"):
        resolve_scorer(42)


@pytest.mark.parametrize("scorer", [NearestNeighborScorer(), GaussianScorer()])
def test_builtin_scorers_satisfy_the_protocol_and_clone(scorer):
    assert isinstance(scorer, Scorer)
    assert clone(scorer).get_params() == scorer.get_params()


def naive_nnd(train, test, exclude, n_neighbors=1):
    """Unoptimised S_NND: one query and view at a time, the whole bank sorted."""
    n_views, n_queries = test.shape[:2]
    scores = torch.zeros(n_queries, dtype=torch.float64)
    for q in range(n_queries):
        keep = torch.arange(train.shape[1]) != exclude[q]
        for view in range(n_views):
            sims = train[view, keep].double() @ test[view, q].double()
            scores[q] += sims.sort(descending=True).values[:n_neighbors].mean() / n_views
    return scores


def naive_csi(train, test, n_shifts, exclude):
    """CSI's score by its definition (Tack et al. 2020, 3.2), in float64 loops.

    View ``a`` of ``n_views`` has rotation ``a * n_shifts // n_views``; a rotation's
    features are averaged over its views; the last ``n_shifts`` columns are the rotation
    logits. Per rotation: the largest norm-weighted cosine to a training projection (the
    query's norm times the cosine), plus the logit of the rotation itself, each divided by
    its mean over the training set; the mean over rotations. The training projections are
    kept normalised in float32, as the scorer stores them (``axis_``).
    """

    def per_shift(features):
        n_views, proj_dim = features.shape[0], features.shape[2] - n_shifts
        for k in range(n_shifts):
            views = [a for a in range(n_views) if a * n_shifts // n_views == k]
            mean = features[views].double().mean(dim=0)
            yield mean[:, :proj_dim], mean[:, proj_dim + k]

    scores = torch.zeros(test.shape[1], dtype=torch.float64)
    for (bank, bank_own), (queries, own) in zip(per_shift(train), per_shift(test), strict=True):
        weight_sim = 1 / bank.norm(dim=1).mean()
        weight_own = 1 / bank_own.mean()
        axis = [(row / row.norm()).float().double() for row in bank]
        for q in range(len(queries)):
            best = max(float(queries[q] @ axis[b]) for b in range(len(bank)) if b != exclude[q])
            scores[q] += (best * weight_sim + own[q] * weight_own) / n_shifts
    return scores


def test_csi_score_matches_its_definition_in_one_piece_and_in_chunks():
    gen = torch.Generator().manual_seed(31)
    train, test = torch.randn(8, 30, 10, generator=gen), torch.randn(8, 12, 10, generator=gen)
    train[:, :, 6:] += 2.0  # rotation logits with a positive mean over the training set
    exclude = torch.tensor([-1, 0, 29, 7, 8, 13, 14, 15, -1, 21, 22, 28])
    scorer = CSIScorer(n_shifts=4).fit(train)
    expected = naive_csi(train, test, 4, exclude)
    np.testing.assert_allclose(scorer.score_samples(test, exclude), expected, rtol=1e-12)
    chunked = CSIHead(scorer.axis_, scorer.weight_sim_, scorer.weight_shift_, chunk_rows=7)
    np.testing.assert_allclose(chunked(test, exclude), expected, rtol=1e-12)


def naive_gaussian(train, test, shrinkage):
    """Unoptimised S_LH: explicit inverse and log-determinant of each view's covariance."""
    scores = []
    for view in range(train.shape[0]):
        z = train[view].double()
        mean = z.mean(0)
        cov = (z - mean).T @ (z - mean) / len(z)
        mu = torch.trace(cov) / cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * mu * torch.eye(cov.shape[0], dtype=cov.dtype)
        diff = test[view].double() - mean
        maha = torch.einsum("nd,de,ne->n", diff, torch.linalg.inv(cov), diff)
        logdet = torch.linalg.slogdet(cov).logabsdet
        scores.append(-0.5 * (maha + logdet + cov.shape[0] * np.log(2 * np.pi)))
    return torch.stack(scores).mean(0)


@pytest.mark.parametrize("working_memory", [1, 1024])
def test_chunked_nnd_matches_the_unoptimised_scorer(working_memory):
    train, test = embeddings(4, 1500, 32, 13), embeddings(4, 300, 32, 14)
    exclude = torch.randint(-1, 1500, (300,), generator=torch.Generator().manual_seed(0))
    fast = NearestNeighborScorer(working_memory=working_memory).fit(train)
    np.testing.assert_allclose(
        fast.score_samples(test, exclude), naive_nnd(train, test, exclude), atol=1e-12
    )


@pytest.mark.parametrize("shrinkage", [0.05, 0.5])
def test_triangular_solve_gaussian_matches_the_unoptimised_scorer(shrinkage):
    train, test = embeddings(3, 400, 24, 15), embeddings(3, 50, 24, 16)
    fast = GaussianScorer(shrinkage=shrinkage).fit(train)
    np.testing.assert_allclose(
        fast.score_samples(test), naive_gaussian(train, test, shrinkage), rtol=1e-9
    )


def refit_without(z: np.ndarray, i: int, shrinkage: float) -> tuple:
    """Mean and shrunk covariance of ``z`` without row ``i``, straight from the definition."""
    rest = np.delete(z, i, axis=0)
    mean = rest.mean(axis=0)
    emp = np.cov(rest, rowvar=False, bias=True)
    mu = np.trace(emp) / z.shape[1]
    return mean, (1 - shrinkage) * emp + shrinkage * mu * np.eye(z.shape[1])


@pytest.mark.parametrize("shrinkage", ["ledoit-wolf", 0.0, 0.3, 1.0])
def test_gaussian_leave_one_out_equals_a_refit_without_the_image(shrinkage):
    train = embeddings(2, 40, 6, 11).double()
    scorer = GaussianScorer(shrinkage=shrinkage).fit(train)
    scores = scorer.score_samples(train, exclude=torch.arange(40))
    expected = np.zeros(40)
    for view in range(2):
        s = float(scorer.shrinkage_[view])  # held at its full-data value
        z = train[view].numpy()
        for i in range(40):
            mean, cov = refit_without(z, i, s)
            expected[i] += multivariate_normal(mean, cov).logpdf(z[i]) / 2
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9)
    in_sample = scorer.score_samples(train).numpy()
    assert (scores.numpy() < in_sample).all()  # each image pulled its Gaussian towards it


def test_gaussian_leave_one_out_only_for_the_queries_named():
    train, test = embeddings(2, 60, 8, 12), embeddings(2, 10, 8, 13)
    scorer = GaussianScorer().fit(train)
    queries = torch.cat([test, train[:, :3]], dim=1)
    exclude = torch.tensor([-1] * 10 + [0, 1, 2])
    scores = scorer.score_samples(queries, exclude)
    np.testing.assert_array_equal(scores[:10], scorer.score_samples(test))
    left_out = scorer.score_samples(train[:, :3], torch.arange(3))
    np.testing.assert_allclose(scores[10:], left_out, rtol=1e-12)


def test_gaussian_fits_in_chunks_as_in_one_piece(monkeypatch):
    import con2.scorers

    train = embeddings(3, 500, 16, 14)
    whole = GaussianScorer().fit(train)
    monkeypatch.setattr(con2.scorers, "_budget", lambda _: 16 * 2 * 37)  # 37-row chunks
    chunked = GaussianScorer().fit(train)
    for name in ("mean_", "cholesky_", "shrinkage_", "scale_"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-10)
    everyone = torch.arange(500)
    np.testing.assert_allclose(
        chunked.score_samples(train, everyone), whole.score_samples(train, everyone), rtol=1e-10
    )
