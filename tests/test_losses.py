import torch
import torch.nn.functional as F

from con2._training import make_views
from con2.augment import SimCLRAugment
from con2.contexts import VerticalFlip
from con2.losses import supcon_loss


def labels(n_images, n_contexts):
    """Context and instance labels in make_views' order: draw, context, image."""
    contexts = torch.arange(n_contexts).repeat_interleave(n_images).repeat(2)
    instances = torch.arange(n_images).repeat(n_contexts).repeat(2)
    return contexts, instances


def test_make_views_labels_follow_the_documented_order():
    x = torch.rand(3, 1, 8, 8)
    views, contexts, instances = make_views(
        x, (VerticalFlip(),), SimCLRAugment(), torch.Generator().manual_seed(0)
    )
    assert views.shape == (12, 1, 8, 8)
    expected_contexts, expected_instances = labels(3, 2)
    assert torch.equal(contexts, expected_contexts)
    assert torch.equal(instances, expected_instances)


def test_supcon_loss_is_minimal_when_positives_coincide():
    clustered = F.normalize(torch.tensor([[1.0, 0.0]] * 4 + [[-1.0, 0.0]] * 4), dim=1)
    spread = F.normalize(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    labels_ = torch.tensor([0] * 4 + [1] * 4)
    assert supcon_loss(clustered, labels_, 0.1) < supcon_loss(spread, labels_, 0.1)
