import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from con2._training import make_views
from con2.augment import SimCLRAugment
from con2.contexts import VerticalFlip
from con2.losses import Con2Loss, supcon_loss


def paper_l(z, i, j, tau):
    """l(x_i, x_j, X) of appendix B.1: -log exp(s_ij/tau) / sum_{k != i} exp(s_ik/tau)."""
    sims = [float(z[i] @ z[k]) / tau for k in range(len(z))]
    denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
    return -math.log(math.exp(sims[j]) / denominator)


def paper_context_loss(z, contexts, tau):
    """L_Context of section 2.2: sum over anchors, 1/(2N-1) sum over same-context views."""
    total = 0.0
    for i in range(len(z)):
        same = [j for j in range(len(z)) if j != i and contexts[j] == contexts[i]]
        total += sum(paper_l(z, i, j, tau) for j in same) / len(same)
    return total


def paper_content_loss(z, instances, tau):
    """L_Content of section 2.2: over images k, 1/12 sum over i in Lambda(k), j in Lambda(k)-i."""
    total = 0.0
    for k in sorted(set(instances.tolist())):
        group = [i for i in range(len(z)) if instances[i] == k]
        pairs = [(i, j) for i, j in itertools.permutations(group, 2)]
        total += sum(paper_l(z, i, j, tau) for i, j in pairs) / len(pairs)
    return total


def labels(n_images, n_contexts):
    """Context and instance labels in make_views' order: draw, context, image."""
    contexts = torch.arange(n_contexts).repeat_interleave(n_images).repeat(2)
    instances = torch.arange(n_images).repeat(n_contexts).repeat(2)
    return contexts, instances


@pytest.mark.parametrize("n_images", [1, 3, 5])
@pytest.mark.parametrize("n_contexts", [2, 3])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_con2_loss_matches_paper_formulas_in_float64(n_images, n_contexts, tau, alpha):
    gen = torch.Generator().manual_seed(n_images * 31 + n_contexts)
    n_views = 2 * n_contexts * n_images
    z_phi = F.normalize(torch.randn(n_views, 16, generator=gen, dtype=torch.float64), dim=1)
    z_psi = F.normalize(torch.randn(n_views, 16, generator=gen, dtype=torch.float64), dim=1)
    contexts, instances = labels(n_images, n_contexts)

    got = Con2Loss(temperature=tau)(z_phi, z_psi, contexts, instances, alpha)

    # The paper's sums are our means times constants: 2KN anchors for L_Context, and
    # N images, each averaging over its pairs, for L_Content.
    reference = paper_context_loss(z_phi, contexts, tau) / n_views + alpha * (
        paper_content_loss(z_psi, instances, tau) / n_images
    )
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(reference, rel=1e-12)


def test_make_views_labels_follow_the_documented_order():
    x = torch.rand(3, 1, 8, 8)
    views, contexts, instances = make_views(
        x, (VerticalFlip(),), SimCLRAugment(), torch.Generator().manual_seed(0)
    )
    assert views.shape == (12, 1, 8, 8)
    expected_contexts, expected_instances = labels(3, 2)
    assert torch.equal(contexts, expected_contexts)
    assert torch.equal(instances, expected_instances)


def test_single_context_loss_is_content_only():
    z = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1)
    instances = torch.arange(4).repeat(2)
    contexts = torch.zeros(8, dtype=torch.long)
    loss = Con2Loss(0.5)(None, z, contexts, instances, alpha=0.0)
    assert float(loss) == pytest.approx(paper_content_loss(z, instances, 0.5) / 4, rel=1e-12)


def test_loss_is_float32_and_finite_for_bf16_inputs_with_small_temperature():
    z = F.normalize(torch.randn(64, 128), dim=1).bfloat16()
    contexts, instances = labels(16, 2)
    loss = Con2Loss(temperature=0.01)(z, z, contexts, instances, 1.0)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_gradients_reach_both_heads():
    z_phi = torch.randn(8, 6, requires_grad=True)
    z_psi = torch.randn(8, 6, requires_grad=True)
    contexts, instances = labels(2, 2)
    loss = Con2Loss()(
        F.normalize(z_phi, dim=1), F.normalize(z_psi, dim=1), contexts, instances, 0.5
    )
    loss.backward()
    assert z_phi.grad.abs().sum() > 0 and z_psi.grad.abs().sum() > 0


def test_supcon_loss_is_minimal_when_positives_coincide():
    clustered = F.normalize(torch.tensor([[1.0, 0.0]] * 4 + [[-1.0, 0.0]] * 4), dim=1)
    spread = F.normalize(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    labels_ = torch.tensor([0] * 4 + [1] * 4)
    assert supcon_loss(clustered, labels_, 0.1) < supcon_loss(spread, labels_, 0.1)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_con2_loss_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be positive"):
        Con2Loss(temperature)
