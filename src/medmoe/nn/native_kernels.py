"""Optional native CPU kernels, compiled on first use with the system C++ compiler and cached.

Some hot loops (Mammoth's dispatch with head size 16) run faster as a small fused C++ kernel than through
PyTorch's generic CPU attention (docs/performance-notes.md). The sources ship inside the package (``medmoe/nn/kernels/*.cpp``);
:func:`load_kernel` compiles one with ``$CXX`` (default ``g++``, ``-O3 -march=native -fopenmp``) into a
cache folder the first time it is needed (a few seconds) and loads it with :mod:`ctypes`. Everything here is
optional: without a compiler, without OpenMP, on another OS or under the ``"torch"`` backend
(:mod:`medmoe.nn.backend`) the operators compute the same function with PyTorch ops (to float rounding;
dropout masks bit for bit). A kernel that fails to build warns once (:class:`RuntimeWarning`).

Environment:

* ``MEDMOE_BACKEND=torch`` (or the older ``MEDMOE_NATIVE_KERNELS=0``) — never build or use native kernels;
* ``MEDMOE_KERNEL_CACHE`` — cache folder (default ``$XDG_CACHE_HOME/medmoe/kernels`` or
  ``~/.cache/medmoe/kernels``);
* ``CXX`` — the compiler.

The cache key hashes the source, the compiler, the flags and the CPU's flags, so an upgraded package or a
different machine sharing a home folder gets its own build. Builds are written to a temporary file and
renamed, so concurrent processes (DDP workers) never load a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .backend import native_enabled, warn_once

__all__ = ["kernel_cache_dir", "load_kernel", "native_kernels_enabled"]

logger = logging.getLogger(__name__)

_SOURCES = Path(__file__).with_name("kernels")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_warned_any: list[str] = []  # the kernel whose failure warned (at most one per process)


def native_kernels_enabled() -> bool:
    """Whether kernels may be used: the native backend (:mod:`medmoe.nn.backend`), and not while
    ``torch.compile`` traces (compiled graphs then take the PyTorch path, which the compiler optimises)."""
    return native_enabled()


def kernel_cache_dir() -> Path:
    """Where compiled kernels are cached (see the module docstring)."""
    if os.environ.get("MEDMOE_KERNEL_CACHE"):
        return Path(os.environ["MEDMOE_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medmoe" / "kernels"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(name: str, source: Path, compiler: str) -> Path:
    headers = [h.read_bytes() for h in sorted(source.parent.glob("*.h"))]  # what the sources may #include
    key = hashlib.sha256(
        b"\0".join(
            [source.read_bytes(), *headers, compiler.encode(), " ".join(_FLAGS).encode(), _cpu_signature().encode()]
        )
    ).hexdigest()[:16]
    cache = kernel_cache_dir()
    target = cache / f"{name}-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *_FLAGS, str(source), "-o", tmp], capture_output=True, text=True, check=False, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source.name}: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("compiled native kernel %s -> %s", name, target)
    return target


#: a kernel function's ctypes signature: ``(argtypes, restype)``
Signature = tuple[list[Any], Any]


def load_kernel(name: str, signatures: Mapping[str, Signature] | None = None) -> ctypes.CDLL | None:
    """The compiled kernel library ``name`` (``medmoe/nn/kernels/<name>.cpp``), or ``None`` if unavailable.

    Builds it on the first call (cached on disk and in memory) and gives the functions named in
    ``signatures`` their ctypes ``argtypes`` and ``restype``. A failure warns once per kernel
    (:class:`RuntimeWarning` and a WARNING log line) and gives ``None``; callers then use their PyTorch path.
    """
    if not native_kernels_enabled():
        return None
    with _lock:
        if name not in _loaded:
            _loaded[name] = _open(name)
        lib = _loaded[name]
        if lib is not None and signatures and not getattr(lib, "_medmoe_signed", False):
            try:
                for function, (argtypes, restype) in signatures.items():
                    getattr(lib, function).argtypes = argtypes
                    getattr(lib, function).restype = restype
            except AttributeError as err:
                _warn_unavailable(name, err)
                lib = _loaded[name] = None
            else:
                lib._medmoe_signed = True
        return lib


def _open(name: str) -> ctypes.CDLL | None:
    """Build (or find in the cache) and load ``kernels/<name>.cpp``; ``None`` with a log line on failure."""
    source = _SOURCES / f"{name}.cpp"
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    try:
        if platform.system() not in ("Linux", "Darwin"):
            raise RuntimeError(f"native kernels are built on Linux and macOS only, not {platform.system()}")
        if not source.exists():
            raise RuntimeError(f"kernel source {source} is missing from the installation")
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX or install g++)")
        return ctypes.CDLL(str(_build(name, source, compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _warn_unavailable(name, err)
        return None


def _warn_unavailable(name: str, err: BaseException) -> None:
    """One warning per process for all kernels (a missing compiler fails them all alike); later ones are logged."""
    message = (
        f"medmoe: native kernel {name} unavailable, computing it with PyTorch ops instead (same results, slower; "
        f"set MEDMOE_BACKEND=torch to silence): {err}"
    )
    if _warned_any:
        logger.warning(message)
        return
    _warned_any.append(name)
    warn_once("native-kernels", message)
