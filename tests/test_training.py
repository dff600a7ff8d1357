"""The training loop: it learns, and it never waits for the host."""

import pytest
import torch

import con2._training as training_module
from con2._training import EpochPlan, build_optimizer, train_epoch
from con2.augment import SimCLRAugment
from con2.contexts import VerticalFlip
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


def test_bfloat16_on_a_cpu_without_it_warns_that_it_is_slow(monkeypatch):
    monkeypatch.setattr(training_module, "native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="slower than with precision='float32'"):
        found = training_module.resolve_precision("bfloat16", torch.device("cpu"))
    assert found.dtype == torch.bfloat16
