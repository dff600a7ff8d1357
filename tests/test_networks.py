import pytest
import torch
import torchvision

from con2.networks import Encoder, ProjectionHead, ResNet18, resnet18


@pytest.mark.parametrize("size,stem", [(8, "small"), (64, "small"), (65, "imagenet")])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_picks_the_stem_by_image_size(size, stem, channels):
    net = resnet18((channels, size, size), base_width=8)
    kernel = net.conv1.kernel_size[0]
    assert kernel == (3 if stem == "small" else 7)
    assert net(torch.zeros(2, channels, size, size)).shape == (2, net.embed_dim)
    assert net.embed_dim == 64


def test_imagenet_stem_at_width_64_has_torchvision_resnet18_parameters():
    ours = {k: v.shape for k, v in ResNet18(3, 64, stem="imagenet").state_dict().items()}
    theirs = {
        k: v.shape
        for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
        if not k.startswith("fc.")
    }
    assert ours == theirs


def test_encoder_heads_and_embeddings_are_normalised_and_backbone_untouched():
    backbone = ResNet18(1, 4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    encoder = Encoder(backbone, {"context": ProjectionHead(32), "content": ProjectionHead(32)})
    projections = encoder(torch.randn(4, 1, 12, 12))
    assert projections["context"].shape == projections["content"].shape == (4, 128)
    torch.testing.assert_close(projections["content"].norm(dim=1), torch.ones(4))
    h = encoder.embed(torch.randn(3, 1, 12, 12))
    assert h.shape == (3, 32)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(3))
    assert encoder.backbone is backbone
    assert all(
        torch.equal(before[k], v)
        for k, v in backbone.state_dict().items()
        if "running" not in k and "num_batches" not in k
    )


def test_encoder_returns_each_heads_projection_by_name():
    encoder = Encoder(ResNet18(1, 4), {"content": ProjectionHead(32, 16)})
    projections = encoder(torch.randn(2, 1, 8, 8))
    assert list(projections) == ["content"] and projections["content"].shape == (2, 16)
    torch.testing.assert_close(projections["content"].norm(dim=1), torch.ones(2))


def test_unknown_stem_is_an_error():
    with pytest.raises(ValueError, match="stem must be"):
        ResNet18(stem="tiny")
