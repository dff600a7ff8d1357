"""Device resolution, seeding, small tensor helpers and scratch folders shared by the package."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.utils import check_random_state

# Frames in these folders are not the user's code: warnings point past them.
_LIBRARY_FOLDERS = (os.path.dirname(sklearn.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn``, attributed to the first caller outside con2 and scikit-learn.

    A fixed ``stacklevel`` points into the library when a call goes through another
    path (``fit`` through scikit-learn's wrapper, ``load`` through the CLI).
    """
    frame, level = sys._getframe(1), 2  # level 2: the caller of this function
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_FOLDERS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


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
        warn(
            f"This model was fitted on {device} but CUDA is not available here; "
            "it will run on the CPU."
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised where the program is, so that it cleans up."""


@contextlib.contextmanager
def terminations_as_interrupts():
    """Turn SIGTERM and SIGHUP into :class:`Terminated` exceptions inside the block.

    What a batch scheduler, ``timeout``, a container stop or a closed terminal sends:
    caches are then removed and files left whole by the same code that handles Ctrl-C,
    instead of the process dying where it stands. Only the main thread can take signals;
    elsewhere (and inside a block that already took them) this does nothing.
    """
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    if threading.current_thread() is not threading.main_thread() or any(
        signal.getsignal(s) is _raise_terminated for s in signals
    ):
        yield
        return
    previous = {s: signal.signal(s, _raise_terminated) for s in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _raise_terminated(number, frame):
    raise Terminated(signal.Signals(number).name)


@contextlib.contextmanager
def scratch_folder(prefix: str, directory=None, needed: int = 0):
    """Yield a new folder for large temporary files, removed on leaving the block.

    Removed also when the process is terminated (:func:`terminations_as_interrupts`).
    A process killed outright (SIGKILL, power loss) leaves its folder behind: it records
    its owner (process id and start time), and the next scratch folder in the same
    ``directory`` removes folders of the same ``prefix`` whose owner is gone, never one
    a live process uses. ``needed`` bytes must be free there, or a one-line error says
    how many are and what to do.
    """
    directory = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    if not directory.is_dir():
        raise ValueError(f"cache_dir {directory} is not an existing folder.")
    _sweep(directory, prefix)
    check_free_space(directory, needed)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    try:
        (folder / "owner").write_text(_process_identity(os.getpid()))
        with terminations_as_interrupts():
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse to start what needs ``needed`` bytes in ``directory`` when they are not free."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"{directory} has {_size(free)} free but the cache needs {_size(needed)}; point "
            "cache_dir (con2 fit --cache-dir) to a folder on a disk with room",
        )


def allocate(file: Path, nbytes: int) -> None:
    """Create ``file`` with ``nbytes`` reserved on disk.

    A memory map of a file whose blocks are not reserved meets a full disk half way, and
    the process dies of SIGBUS; reserved, it either gets its room now or a clear error.
    """
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if hasattr(os, "posix_fallocate") and nbytes:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:  # a file system without fallocate: no reservation
                    os.ftruncate(fd, nbytes)
                    return
                raise OSError(
                    errno.ENOSPC,
                    f"{file.parent} has no room for {_size(nbytes)} of cache; point cache_dir "
                    "(con2 fit --cache-dir) to a folder on a disk with room",
                ) from None
        else:
            os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)


def _size(nbytes: int) -> str:
    """Write a size for people: KiB below 1 MiB, MiB below 1 GiB, then GiB."""
    if nbytes < 2**20:
        return f"{nbytes / 2**10:.0f} KiB"
    return f"{nbytes / 2**20:.0f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.1f} GiB"


def _process_identity(pid: int) -> str:
    """``pid`` and its start time (so that a reused process id is not taken for its owner)."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return f"{pid}"
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return f"{pid} {fields[19]}"  # field 22 of stat: the start time, in clock ticks


def _sweep(directory: Path, prefix: str) -> None:
    """Remove ``prefix`` folders in ``directory`` whose owning process is gone."""
    for folder in directory.glob(f"{prefix}*"):
        try:
            owner = (folder / "owner").read_text().split()
        except OSError:
            continue  # being created now, or not ours: left alone
        if owner and not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(owner: list) -> bool:
    pid = int(owner[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return len(owner) < 2 or _process_identity(pid).split()[1:] == owner[1:]
