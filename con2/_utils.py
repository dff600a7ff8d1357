"""Device resolution, seeding and small tensor helpers shared by the package."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn the ``device`` parameter into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available and the CPU otherwise. An explicit CUDA
    device on a machine without CUDA is an error, not a silent fallback.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'; got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or device='cpu'."
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device; got {device!r}.")
    return resolved


def loadable_device(device: torch.device) -> torch.device:
    """Return ``device`` if this machine has it, else the CPU (with a warning)."""
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"This model was fitted on {device} but CUDA is not available here; "
            "it will run on the CPU.",
            UserWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return device


def native_bfloat16() -> bool:
    """Whether this machine's CPU computes bfloat16 in hardware.

    A fixed rule about the hardware, never a timing (a result must not depend on the
    load): x86 CPUs with AVX512-BF16 or AMX tiles (recent Xeons, AMD Zen 4 and later),
    as torch detects them, and ARM CPUs whose Linux ``/proc/cpuinfo`` lists ``bf16``
    (Neoverse V1 and later, e.g. AWS Graviton3). Everything else computes bfloat16 by
    conversion to float32, which is slower than float32 itself.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return True
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    # "Features" is the name of the CPU flags in ARM's /proc/cpuinfo ("flags" on x86)
    features = [line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                if line.startswith("Features")]  # fmt: skip
    return bool(features) and "bf16" in features[0]


def derive_seed(random_state: Any) -> int:
    """Draw one integer seed from a scikit-learn ``random_state`` value."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """Return a :class:`torch.Generator` on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def move(obj: Any, device: torch.device | str) -> Any:
    """Deep-copy ``obj`` with every tensor it holds mapped to ``device``.

    Works for any picklable object graph (modules, scorers, plain containers) by a
    round trip through :func:`torch.save` in memory, the mechanism ``torch.load``
    offers for remapping storages between devices.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location=device, weights_only=False)


def release_cuda_memory() -> None:
    """Return cached CUDA memory to the driver (after an out-of-memory error)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
