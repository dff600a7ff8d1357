"""The training loop: it learns, and it never waits for the host."""

import pytest
import torch

import con2._training as training_module
from con2._training import EpochPlan, build_optimizer, make_views, train_epoch, view_keys
from con2.augment import KeyedRandom, SimCLRAugment
from con2.contexts import ColorInvert, VerticalFlip
from con2.networks import Encoder, ResNet18
from con2.objectives import Con2Objective


def epoch_setup(device, n_images=64, batch_size=16, seed=0):
    encoder = Encoder(ResNet18(1, 4), Con2Objective().heads(32, 1)).to(device)
    optimizer, scheduler = build_optimizer(encoder, 1e-3, 1e-3, 100)
    ramp = torch.linspace(0, 255, 16, device=device).view(1, 1, 16, 1)
    noise = torch.rand(n_images, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    images = (ramp * 0.7 + noise.to(device) * 70).to(torch.uint8)
    plan = EpochPlan(images, (VerticalFlip(),), SimCLRAugment(), Con2Objective(), batch_size,
                     seed, torch.device(device))  # fmt: skip
    return encoder, optimizer, scheduler, plan


def test_the_context_loss_falls_when_training_without_content_weight():
    encoder, optimizer, scheduler, plan = epoch_setup("cpu")
    zero = iter(lambda: 0.0, None)  # progress 0: Con2's content weight is 0
    losses = [float(train_epoch(encoder, optimizer, scheduler, plan, epoch, zero))
              for epoch in range(6)]  # fmt: skip
    assert losses[-1] < losses[0]


def test_an_epoch_is_reproducible_from_its_seed():
    results = []
    for _ in range(2):
        torch.manual_seed(0)  # same initial weights
        encoder, optimizer, scheduler, plan = epoch_setup("cpu")
        progress = iter(lambda: 0.5, None)
        results.append(float(train_epoch(encoder, optimizer, scheduler, plan, 0, progress)))
    assert results[0] == results[1]


def test_views_made_a_few_images_at_a_time_are_those_of_the_whole_batch(monkeypatch):
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    contexts = (VerticalFlip(), ColorInvert())

    def views(piece_images, out=None):
        monkeypatch.setattr(training_module, "_MMAP_THRESHOLD", 0)  # always in pieces
        monkeypatch.setattr(training_module, "_PIECE_BYTES", piece_images * 4 * 3 * 12 * 12)
        random = KeyedRandom(view_keys(0, 3, torch.arange(5), 3))
        return make_views(images, contexts, SimCLRAugment(), random, out=out)[0]

    whole = views(5)
    out = torch.empty(30, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    pieces = views(2, out=out)  # pieces of 2, 2 and 1 images, into a channels-last tensor
    assert pieces is out and pieces.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(pieces, whole)
    assert torch.equal(views(1), whole)
    # the same pixels, as floats in [0, 1], give the same views
    random = KeyedRandom(view_keys(0, 3, torch.arange(5), 3))
    floats = make_views(images.float() / 255, contexts, SimCLRAugment(), random)[0]
    assert torch.equal(floats, whole)
    assert whole.amin() >= -1 and whole.amax() <= 1 and whole.std() > 0.1


def test_views_refuse_an_out_tensor_of_another_shape():
    random = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"out must be float32 of shape \(8, 1, 6, 6\)"):
        make_views(torch.rand(2, 1, 6, 6), (VerticalFlip(),), SimCLRAugment(), random,
                   out=torch.empty(4, 1, 6, 6))  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="requires CUDA")
def test_a_cuda_epoch_never_synchronises_with_the_host():
    encoder, optimizer, scheduler, plan = epoch_setup("cuda")
    progress = iter(lambda: 0.5, None)
    train_epoch(encoder, optimizer, scheduler, plan, 0, progress)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_epoch(encoder, optimizer, scheduler, plan, 1, progress)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss.cpu())


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bfloat16_on_cuda_and_on_cpus_that_compute_it(monkeypatch, native):
    monkeypatch.setattr(training_module, "native_bfloat16", lambda: native)
    cpu = training_module.resolve_precision("auto", torch.device("cpu"))
    assert cpu.name == ("bfloat16" if native else "float32")
    assert training_module.resolve_precision("auto", torch.device("cuda")).name == "bfloat16"
    assert training_module.resolve_precision("float32", torch.device("cpu")).dtype == torch.float32


@pytest.mark.parametrize(("width", "faulty"), [
    (1, ["layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]),
    (2, ["layer3.0.conv1", "layer4.0.conv1"]),
    (4, ["layer4.0.conv1"]),
    (5, []),
])  # fmt: skip
def test_faulty_bfloat16_convolutions_are_the_strided_ones_on_one_pixel_wide_maps(width, faulty):
    # ResNet18's small stem keeps the width; layer2, 3 and 4 open with a 3x3 stride-2
    # convolution (their 1x1 stride-2 shortcuts are not faulty)
    encoder = Encoder(ResNet18(1, 4), Con2Objective().heads(32, 1))
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.train()
    found = training_module.bfloat16_faulty_convolutions(encoder, (1, 3, width))
    assert found == tuple(f"backbone.{name}" for name in faulty)
    assert encoder.training  # restored, and no batch-norm statistic moved
    assert all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items())


def test_faulty_bfloat16_convolutions_are_found_in_any_backbone():
    across = torch.nn.Conv2d(1, 2, 3, stride=(1, 2), padding=1)  # strides across the width
    down = torch.nn.Conv2d(2, 2, 3, stride=(2, 1), padding=1)  # only down the height
    net = torch.nn.Sequential(across, down)
    assert training_module.bfloat16_faulty_convolutions(net, (1, 4, 1)) == ("0",)
    assert training_module.bfloat16_faulty_convolutions(net, (1, 4, 3)) == ()


def test_auto_precision_avoids_faulty_convolutions_and_bfloat16_refuses_them(monkeypatch):
    monkeypatch.setattr(training_module, "native_bfloat16", lambda: True)
    cpu, cuda, faulty = torch.device("cpu"), torch.device("cuda"), ("backbone.layer4.0.conv1",)
    assert training_module.resolve_precision("auto", cpu, faulty).name == "float32"
    assert training_module.resolve_precision("auto", cpu).name == "bfloat16"
    with pytest.raises(ValueError, match=r"cannot train.*backbone\.layer4\.0\.conv1.*'float32'"):
        training_module.resolve_precision("bfloat16", cpu, faulty)
    # the fault is the CPU's: CUDA keeps bfloat16
    assert training_module.resolve_precision("auto", cuda, faulty).name == "bfloat16"
    assert training_module.resolve_precision("bfloat16", cuda, faulty).name == "bfloat16"


def test_bfloat16_on_a_cpu_without_it_warns_that_it_is_slow(monkeypatch):
    monkeypatch.setattr(training_module, "native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="slower than with precision='float32'"):
        found = training_module.resolve_precision("bfloat16", torch.device("cpu"))
    assert found.dtype == torch.bfloat16
