"""Backbones, projection heads and the encoder that joins them.

``ResNet18`` follows torchvision's ``resnet18`` layer for layer (it is built from
torchvision's ``BasicBlock``) with two knobs torchvision's class does not offer: the width
(``base_width`` channels in the first stage, doubling per stage; torchvision fixes 64)
and the stem. The ``"small"`` stem is a 3x3 stride-1 convolution without max-pooling,
the usual choice for images up to 64 px [1]_; the ``"imagenet"`` stem is torchvision's
7x7 stride-2 convolution and max-pool. At ``base_width=64`` with the ImageNet stem the
parameters have exactly the shapes of ``torchvision.models.resnet18`` without ``fc``.

References
----------
.. [1] He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
   https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

__all__ = [
    "BACKBONES",
    "Encoder",
    "ProjectionHead",
    "ResNet18",
    "build_encoder",
    "resnet18",
]

SMALL_IMAGE_MAX_SIZE = 64  # images up to this many pixels a side get the small stem


class ResNet18(nn.Module):
    """ResNet18 feature extractor (no classifier).

    Parameters
    ----------
    in_channels : int, default=3
        Number of input channels.
    base_width : int, default=64
        Channels of the first stage; the stages have 1, 2, 4 and 8 times as many.
    stem : {"small", "imagenet"}, default="small"
        ``"small"``: 3x3 stride-1 convolution, no max-pool. ``"imagenet"``: 7x7 stride-2
        convolution followed by a 3x3 stride-2 max-pool.

    Attributes
    ----------
    embed_dim : int
        Size of the output features, ``8 * base_width``.

    Examples
    --------
    >>> import torch
    >>> net = ResNet18(in_channels=1, base_width=8)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 64])
    """

    def __init__(self, in_channels: int = 3, base_width: int = 64, stem: str = "small"):
        super().__init__()
        if stem == "small":
            self.conv1 = nn.Conv2d(in_channels, base_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise ValueError(f"stem must be 'small' or 'imagenet'; got {stem!r}.")
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = base_width
        self.layer1 = self._make_layer(base_width, stride=1)
        self.layer2 = self._make_layer(2 * base_width, stride=2)
        self.layer3 = self._make_layer(4 * base_width, stride=2)
        self.layer4 = self._make_layer(8 * base_width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = 8 * base_width
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                conv1x1(self._inplanes, planes, stride), nn.BatchNorm2d(planes)
            )
        first = BasicBlock(self._inplanes, planes, stride, downsample)
        self._inplanes = planes
        return nn.Sequential(first, BasicBlock(planes, planes))

    def forward(self, x: Tensor) -> Tensor:
        """Map (batch_size, in_channels, height, width) to (batch_size, embed_dim)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def resnet18(image_shape: tuple, base_width: int = 64) -> ResNet18:
    """Build the ResNet18 suited to images of ``image_shape = (n_channels, height, width)``.

    The small-image stem up to 64 px a side, torchvision's ImageNet stem above.
    """
    n_channels, height, width = image_shape
    stem = "small" if max(height, width) <= SMALL_IMAGE_MAX_SIZE else "imagenet"
    return ResNet18(in_channels=n_channels, base_width=base_width, stem=stem)


BACKBONES = {"resnet18": resnet18}


class ProjectionHead(nn.Module):
    """Two-layer MLP head, with L2-normalised output by default (SimCLR's ``g``).

    Parameters
    ----------
    in_dim : int
        Size of the backbone features.
    out_dim : int, default=128
        Size of the projection.
    normalize : bool, default=True
        Whether to return unit vectors (False: CSI scores with the norm too).
    """

    def __init__(self, in_dim: int, out_dim: int = 128, normalize: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim)
        )
        self.normalize = normalize

    def forward(self, h: Tensor) -> Tensor:
        """Map (batch_size, in_dim) features to (batch_size, out_dim) projections."""
        z = self.net(h)
        return F.normalize(z, dim=1) if self.normalize else z


class Encoder(nn.Module):
    """A backbone ``g`` and the projection heads of a training objective.

    Parameters
    ----------
    backbone : nn.Module
        Maps (batch_size, n_channels, height, width) to (batch_size, embed_dim) and has an
        ``embed_dim`` attribute. It is used as given, never modified.
    heads : dict of str to nn.Module, default=None
        The objective's projection heads by name (Con2: ``"context"``, phi, and
        ``"content"``, psi), each mapping (batch_size, embed_dim) features to projections.

    Examples
    --------
    >>> import torch
    >>> encoder = Encoder(ResNet18(1, 4), {"content": ProjectionHead(32)})
    >>> {name: z.shape for name, z in encoder(torch.zeros(2, 1, 8, 8)).items()}
    {'content': torch.Size([2, 128])}
    """

    def __init__(self, backbone: nn.Module, heads: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads or {})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return each head's projection of ``x``, by head name."""
        h = self.backbone(x)
        return {name: head(h) for name, head in self.heads.items()}

    def embed(self, x: Tensor) -> Tensor:
        """Return L2-normalised backbone features ``h / ||h||``, shape (batch_size, embed_dim)."""
        return F.normalize(self.backbone(x).float(), dim=1)

    def features(self, x: Tensor, heads: tuple | None = None) -> Tensor:
        """Return what a scorer compares: :meth:`embed`, or the named heads' outputs side by side.

        ``heads`` (names, in order) concatenates their outputs as the heads return them,
        in float32, shape (batch_size, sum of the heads' output sizes).
        """
        if heads is None:
            return self.embed(x)
        h = self.backbone(x)
        return torch.cat([self.heads[name](h).float() for name in heads], dim=1)

    def feature_dim(self, heads: tuple | None = None) -> int:
        """Return the size of :meth:`features` rows (heads are probed on a zero feature)."""
        if heads is None:
            return self.backbone.embed_dim
        parameter = next(self.heads.parameters())
        probe = parameter.new_zeros(1, self.backbone.embed_dim)
        with torch.no_grad():
            return sum(self.heads[name](probe).shape[1] for name in heads)


def build_encoder(backbone, base_width: int, image_shape: tuple, seed: int, heads) -> Encoder:
    """Build a fresh encoder on the CPU with weights drawn from ``seed``.

    ``backbone`` is a name in :data:`BACKBONES` or a callable ``backbone(image_shape)``;
    its output is checked on a probe batch. ``heads(embed_dim)`` returns the projection
    heads by name (an objective's, for instance). Only the CPU generator is seeded (the
    weights are drawn on the CPU), and ``fork_rng`` restores it afterwards: the global
    random state of every device is left as it was (``torch.manual_seed`` would also
    reseed CUDA's, which ``fork_rng(devices=[])`` does not restore).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if isinstance(backbone, str):
            net = BACKBONES[backbone](image_shape, base_width)
        else:
            net = backbone(image_shape)
        _check_backbone(net, image_shape)
        return Encoder(net, heads(net.embed_dim))


def _check_backbone(net, image_shape: tuple) -> None:
    if not isinstance(net, torch.nn.Module) or not isinstance(getattr(net, "embed_dim", None), int):
        raise TypeError(
            "backbone(image_shape) must return a torch.nn.Module with an integer `embed_dim` "
            f"attribute; got {type(net).__name__}."
        )
    was_training = net.training
    net.eval()  # no batch-norm statistics are updated by the probe
    with torch.no_grad():
        out = net(torch.zeros(2, *image_shape))
    net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, net.embed_dim):
        raise ValueError(
            f"backbone must map (batch, {', '.join(map(str, image_shape))}) to (batch, "
            f"embed_dim={net.embed_dim}); got {getattr(out, 'shape', type(out).__name__)}."
        )
