"""``--device cpu|cuda`` for the benchmarks: checking the option, synchronised timing and CUDA peak memory."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

DEVICE_HELP = "cpu (default), cuda or cuda:N; --threads applies to cpu only"
CUDA_PEAK_NOTE = "torch.cuda.max_memory_allocated() during the step minus the memory allocated just before it"


def validate_device(device: str) -> str:
    """``device`` if it names the CPU or an available CUDA device.

    Raises:
        ValueError: another device type, CUDA without a GPU, or a CUDA index this machine does not have (an
            :class:`~medmoe.errors.InputError` naming the ``device`` setting).
    """
    import torch

    from ..errors import SETTING, InputError

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"{{device}} {device!r}: expected cpu, cuda or cuda:N", device=SETTING) from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"{{device}} {device!r}: expected cpu, cuda or cuda:N", device=SETTING)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{{device}} {device}: CUDA is not available (torch.cuda.is_available() is False)",
                             device=SETTING)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{{device}} {device}: only {torch.cuda.device_count()} CUDA device(s) here",
                             device=SETTING)
    return device


def check_device(parser: argparse.ArgumentParser, device: str) -> str:
    """``device`` if it names the CPU or an available CUDA device, else exit through ``parser.error``
    (:func:`validate_device`'s message)."""
    from ..errors import InputError

    try:
        return validate_device(device)
    except InputError as err:
        parser.error(err.render(lambda keyword, _value: "--" + keyword.replace("_", "-")))


def is_cuda(device: str) -> bool:
    """Whether a ``--device`` value (``cuda`` or ``cuda:N``) names a CUDA device."""
    return device.startswith("cuda")


def sync(device: str) -> None:
    """Wait for the device's queued work (``torch.cuda.synchronize``; no-op on the CPU); before any timer."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def cuda_peak_start(device: str) -> int:
    """Before a measured step on CUDA: synchronise, reset the peak counter, return the bytes allocated now."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def cuda_peak_mib(device: str, start: int) -> float:
    """After the step: MiB of ``torch.cuda.max_memory_allocated()`` above :func:`cuda_peak_start`'s value."""
    import torch

    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - start, 0) / 2**20


def cuda_timed_steps(
    step: Callable[[], None], zero_grad: Callable[[], None], reps: int, device: str
) -> tuple[float, list[float], float]:
    """CUDA: ``(warm-up seconds, seconds of each of the reps steps, peak MiB)``.

    One warm-up step (CUDA context, kernels, cuBLAS workspaces stay out of time and memory), then ``zero_grad``
    and ``reps`` synchronised steps; the peak is taken over them (one extra step when ``reps`` is 0), relative
    to the memory allocated after the warm-up with the gradients freed.
    """
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    warm = time.perf_counter() - t0
    zero_grad()
    start = cuda_peak_start(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    if not times:
        step()
    return warm, times, cuda_peak_mib(device, start)


def gpu_line(device: str) -> str:
    """``'NVIDIA H100 80GB HBM3 (cuda:0, 79.2 GiB), torch 2.x, CUDA 12.x'`` for the printed machine line."""
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return (
        f"{torch.cuda.get_device_name(index)} (cuda:{index}, {props.total_memory / 2**30:.1f} GiB), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
