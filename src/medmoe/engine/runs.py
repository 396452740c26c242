"""Run folders: a manifest written first, no silent overwrite, resume validated before anything is written.

Every training command (``mil train``, ``mil compare``, ``seg train``, ``mosaic train``) writes into one
run folder. This module decides, **before anything is written**, whether that folder may be used:

* a new or empty folder: :func:`start_run_folder` creates it and writes ``manifest.json`` first;
* a non-empty folder without ``resume`` is refused, unless ``overwrite`` asks for a clean start, which
  deletes the old run's contents first (only when the folder is a medmoe run: a folder of other files is
  never deleted);
* ``resume`` compares the run's identity (model, data, folds, seeds, split hashes, settings) with the
  manifest already there and refuses any difference, naming it; nothing is written by this check;
* a folder written by an older medmoe (no manifest) can still be read by ``predict``/``eval``, but it
  cannot be resumed: nothing in it records the k, seeds or data it was trained with, so a resume could not
  be validated before files are rewritten. It is refused with a message that says so; ``overwrite``
  starts it over.

The manifest (``manifest.json``)::

    {"format": 1, "kind": "mil-cv", "medmoe_version": "0.1.0", "created": "2026-...",
     "identity": {...everything a resume must match...},
     "members": ["seed0/fold0", "seed0/fold1", ...]}

``members`` are the run's sub-runs (the MIL folds): :func:`manifest_checkpoints` returns exactly their
checkpoints, so a run folder never ensembles a stale fold left by an earlier run.

Write faults are reported the same way: :func:`writing` turns a full disk or a read-only folder met while
saving into :class:`RunWriteError` (a ``RuntimeError``) that says which file could not be written and that
the files already there (the last good checkpoint) are intact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import SETTING, InputError, MedmoeError

__all__ = [
    "MANIFEST_NAME",
    "FolderPlan",
    "RunFolderError",
    "RunManifest",
    "RunWriteError",
    "check_run_folder",
    "data_identity",
    "fingerprint",
    "identity_differences",
    "manifest_checkpoints",
    "read_manifest",
    "start_run_folder",
    "without_later_defaults",
    "write_manifest",
    "writing",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

#: names that mark a folder as a (possibly old, manifest-less) medmoe run, so ``overwrite`` may clear it
_RUN_MARKERS = frozenset(
    {MANIFEST_NAME, "results.json", "summary.md", "comparison.json", "comparison.md", "trainer_state.pt",
     "checkpoint", "metrics.csv", "report.md", "fold_result.json", "test_predictions.csv", "test_risks.csv"}
)
_SEED_DIR = re.compile(r"^seed-?\d+$")
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class RunFolderError(InputError):
    """The run folder cannot be used as asked (not empty, another run, unwritable, a file, ...).

    Its message names the settings as placeholders (``{out_dir}``, ``{resume}``, ``{overwrite}``, ``{lr}``):
    a Python caller reads ``out_dir``/``resume=True``, the command line ``--out``/``--resume``."""


def _folder_error(template: str, **settings: Any) -> RunFolderError:
    return RunFolderError(template, **{"out_dir": SETTING, **settings})


class RunWriteError(MedmoeError, RuntimeError):
    """Saving into the run folder failed (disk full, read-only, no permission); earlier files are intact."""


@dataclass
class RunManifest:
    """What a run folder holds: its kind, its identity (everything a resume must match) and its members.

    Attributes:
        kind: ``"mil-cv"``, ``"mil-compare"``, ``"seg"`` or ``"mosaic"``.
        identity: JSON-able mapping: model, data identity, folds, seeds, split hashes, settings.
        members: sub-run folders relative to the run folder (``"seed0/fold0"``), in order.
        medmoe_version: the version that wrote it.
        created: ISO time stamp (UTC).
    """

    kind: str
    identity: dict[str, Any]
    members: list[str] = field(default_factory=list)
    medmoe_version: str = ""
    created: str = ""

    def __post_init__(self) -> None:
        self.identity = _jsonable(self.identity)
        if not self.medmoe_version:
            from .. import __version__

            self.medmoe_version = __version__
        if not self.created:
            self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def to_json(self) -> str:
        return json.dumps(
            {"format": MANIFEST_FORMAT, "kind": self.kind, "medmoe_version": self.medmoe_version,
             "created": self.created, "identity": self.identity, "members": list(self.members)},
            indent=2, sort_keys=False,
        ) + "\n"

    def differences(self, other: RunManifest) -> tuple[list[str], dict[str, Any]]:
        """Differences of ``other``'s identity from this one (empty: the same run), one per setting, and the
        settings they name: ``(["{lr}: 0.0001 in the folder, 0.01 now"], {"lr": SETTING})`` (rendered
        as ``lr``/``--lr`` by :class:`~medmoe.errors.InputError`)."""
        if self.kind != other.kind:
            return [f"kind: {self.kind} here, {other.kind} asked"], {}
        settings: dict[str, Any] = {}
        return _differences(self.identity, other.identity, "", settings), settings


    def extended_by(self, other: RunManifest) -> RunManifest | None:
        """This run with ``other``'s new seeds added, when ``other`` is the same run on more seeds; else ``None``.

        The same run means: the same kind and the same identity except ``seeds`` and ``split_hashes``, and
        the same split hash for every seed both hold. This is how a grid is filled one seed per process
        (``mil compare ... --seed S --resume``, ``benchmarks/full_protocol/run_units.sh``)."""
        if self.kind != other.kind:
            return None
        seed_keys = ("seeds", "split_hashes")
        mine = {k: v for k, v in self.identity.items() if k not in seed_keys}
        theirs = {k: v for k, v in other.identity.items() if k not in seed_keys}
        old_h, new_h = self.identity.get("split_hashes"), other.identity.get("split_hashes")
        old_s, new_s = self.identity.get("seeds"), other.identity.get("seeds")
        if mine != theirs or not all(isinstance(x, dict) for x in (old_h, new_h)) \
                or not all(isinstance(x, list) for x in (old_s, new_s)):
            return None
        if any(old_h[s] != new_h[s] for s in set(old_h) & set(new_h)):
            return None
        identity = {**self.identity, "seeds": [*old_s, *(s for s in new_s if s not in old_s)],
                    "split_hashes": {**old_h, **new_h}}
        members = [*self.members, *(m for m in other.members if m not in self.members)]
        return RunManifest(self.kind, identity, members, self.medmoe_version, self.created)


def without_later_defaults(settings: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as a run's identity records them: each setting of ``later`` (added after run folders were
    first written, mapped to its default) left out while at that default, so that a folder written before it
    existed still resumes; set to anything else it is recorded and checked like any setting."""
    return {k: v for k, v in settings.items() if not (k in later and v == later[k])}


def identity_differences(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The differences of the run identity (or settings) ``new`` from ``old``, one per setting, and the settings
    they name: ``(["{lr}: 0.0001 in the folder, 0.01 now"], {"lr": SETTING})`` (see
    :meth:`RunManifest.differences`; the training loop's resume check uses it on trainer states)."""
    settings: dict[str, Any] = {}
    return _differences(_jsonable(old), _jsonable(new), "", settings), settings


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str, settings: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k not in _FIRST, str(k))):
        a, b = old.get(key, "not set"), new.get(key, "not set")
        if a == b:
            continue
        if key in _PLAIN:  # data identities and fingerprints: say what differs, not the hashes
            out.append(_PLAIN[key])
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = ""
            if key == "model_overrides":
                inner, settings["model_overrides"] = "{model_overrides} ", SETTING
            out += _differences(a, b, inner, settings)
            continue
        keyword = _KEYWORDS.get(str(key), str(key))
        if prefix:
            name = f"{prefix}{key}"
        else:
            settings[keyword] = SETTING
            name = "{" + keyword + "}"
        out.append(f"{name}: {_short(a)} in the folder, {_short(b)} now")
    return out


#: identity keys shown first (the usual reasons); keys described in words; keys named as another setting
_FIRST = ("model_name", "data", "k", "seeds", "model_overrides")
_PLAIN = {
    "data": "the data differ (bag ids, labels or features)", "split_hashes": "the folds (split hashes) differ",
    "files": "the image/label files differ", "train_cases": "the training cases differ",
    "val_cases": "the validation cases differ",
}
_KEYWORDS = {"roi_size": "roi", "num_samples": "samples", "sw_overlap": "overlap", "survival_bins": "bins"}


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples -> lists, keys -> str, unknown objects -> str)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) and len(value) < 30 else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fingerprint(value: Any) -> str:
    """A 16-hex-digit SHA-256 of ``value``'s canonical JSON (identifies lists of ids, labels, ...)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def data_identity(dataset: Any) -> dict[str, Any]:
    """What identifies a bag dataset: bag count and fingerprints of its bag ids, labels and patients,
    its feature size and class names (a resume on other data changes at least one of them)."""
    ids = [str(b) for b in getattr(dataset, "bag_ids", [])]
    out: dict[str, Any] = {"bags": len(ids), "bag_ids": fingerprint(ids)}
    for name in ("labels", "groups"):
        values = getattr(dataset, name, None)
        if values is not None:
            out[name] = fingerprint([str(v) for v in values])
    for name in ("feature_dim", "class_names", "label_names"):
        value = getattr(dataset, name, None)
        if value is not None:
            out[name] = value if isinstance(value, int) else [str(v) for v in value]
    return out


def read_manifest(run_dir: str | Path) -> RunManifest | None:
    """The manifest of ``run_dir``, ``None`` when it has none (a new folder, or an older medmoe's run)."""
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return RunManifest(kind=str(raw["kind"]), identity=dict(raw["identity"]), members=list(raw.get("members", [])),
                           medmoe_version=str(raw.get("medmoe_version", "")), created=str(raw.get("created", "")))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _folder_error(f"{path} is unreadable or not a medmoe manifest ({err}); the run folder cannot be "
                            "checked: use {overwrite} to start it over, or another {out_dir}", overwrite=True) from err


def manifest_checkpoints(run_dir: str | Path) -> list[Path] | None:
    """The checkpoints of the manifest's members (``member/checkpoint``), in order; ``None`` without a
    manifest. A member without a finished checkpoint is an error naming it (an interrupted run)."""
    manifest = read_manifest(run_dir)
    root = Path(run_dir)
    if manifest is not None and manifest.kind == "mil-compare":
        variants = sorted(p.parent for p in root.glob(f"*/*/*/{MANIFEST_NAME}"))
        example = f", e.g. {variants[0]}" if variants else ""
        raise RunFolderError(f"{root} is a comparison grid of {len(variants)} runs; give one of its run folders "
                             f"(<dataset>/<model>/<patch embedding>){example}")
    if manifest is None or not manifest.members:
        return None
    paths = [root / m / "checkpoint" for m in manifest.members]
    missing = [str(p.relative_to(root)) for p in paths if not (p / "config.json").is_file()]
    if missing:
        raise RunFolderError(
            f"run {root} is not finished: no checkpoint in {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            + "; finish it with --resume, or give one fold's checkpoint folder"
        )
    return paths


def _entries(folder: Path, allow: Iterable[str]) -> list[Path]:
    keep = set(allow)
    return sorted(p for p in folder.iterdir() if p.name not in keep)


def _is_run_folder(entries: Sequence[Path]) -> bool:
    return any(p.name in _RUN_MARKERS or (p.is_dir() and _SEED_DIR.match(p.name)) for p in entries)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise _folder_error(f"{{out_dir}} {out_dir} is a file, not a folder; give a folder path for the run")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _folder_error(f"{{out_dir}} {out_dir}: {parent} is a file, not a folder")
            break


def _probe_writable(folder: Path) -> None:
    """Raise :class:`RunFolderError` when no file can be created in ``folder`` (read-only, no permission)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".medmoe-write-test.", dir=folder)
    except OSError as err:
        raise _unwritable(folder, err) from err
    os.close(fd)
    os.unlink(tmp)


def _unwritable(folder: Path, err: OSError) -> RunFolderError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    return _folder_error(f"cannot write into the run folder {{out_dir}} {folder} ({reason.lower()}); choose a folder "
                         "you can write to with {out_dir}, or fix its permissions")


@dataclass(frozen=True)
class FolderPlan:
    """What :func:`check_run_folder` decided: ``"new"``, ``"resume"``, ``"extend"`` (resume, adding seeds the
    folder does not hold yet: :meth:`RunManifest.extended_by`) or ``"overwrite"`` (``"child"``: a worker of a
    multi-device run, left to rank 0), and the manifest already in the folder (for ``"resume"``/``"extend"``)."""

    action: str
    existing: RunManifest | None = None


def check_run_folder(
    out_dir: str | Path,
    manifest: RunManifest | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow: Iterable[str] = (),
    resumable: bool = True,
) -> FolderPlan:
    """Decide whether ``out_dir`` may take this run; writes and deletes nothing.

    Args:
        out_dir: the run folder.
        manifest: the new run's manifest (its identity is compared on ``resume``); ``None`` skips the
            comparison (a pre-check before the identity is known).
        resume: continue the run already there (same identity required).
        overwrite: delete the run already there and start over.
        allow: entry names that do not make the folder "non-empty" and are kept by ``overwrite`` (e.g. the
            demo data a command wrote into the folder itself).
        resumable: whether the caller can resume (MOSAIC cannot: its refusal then suggests only overwrite).

    Raises:
        RunFolderError: the folder is a file, not writable, holds another run (or other files), or
            differs from the run to resume.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise _folder_error("{resume} continues the run in {out_dir} and {overwrite} deletes it: give only one",
                            resume=True, overwrite=True)
    _check_target(out_dir)
    entries = _entries(out_dir, allow) if out_dir.is_dir() else []
    if not entries:
        if out_dir.is_dir():
            _probe_writable(out_dir)
        if resume:
            logger.info("nothing to resume in %s; starting a new run", out_dir)
        return FolderPlan("new")
    existing = read_manifest(out_dir)
    names = ", ".join(p.name for p in entries[:4]) + (", ..." if len(entries) > 4 else "")
    if overwrite:
        if existing is None and not _is_run_folder(entries):
            raise _folder_error(
                f"{{out_dir}} {out_dir} holds files that are not a medmoe run ({names}); {{overwrite}} deletes only "
                "run folders: choose an empty or new folder with {out_dir}", overwrite=True
            )
        _probe_writable(out_dir)
        return FolderPlan("overwrite", existing)
    if not resume:
        what = f"a {existing.kind} run" if existing is not None else (
            "a run" if _is_run_folder(entries) else f"other files ({names})")
        cont = "{resume} to continue it, " if resumable else ""
        raise _folder_error(
            f"{{out_dir}} {out_dir} already holds {what}; pass {cont}{{overwrite}} to delete it and start over, or "
            "choose another {out_dir}", overwrite=True, **({"resume": True} if resumable else {})
        )
    if existing is None:
        if not _is_run_folder(entries):
            raise _folder_error(f"{{out_dir}} {out_dir} holds files that are not a medmoe run ({names}); there is "
                                "nothing to resume: choose an empty or new folder with {out_dir}")
        raise _folder_error(
            f"{{out_dir}} {out_dir} was written by an older medmoe (no {MANIFEST_NAME}), so it does not record the "
            "model, data, folds and seeds it was trained with and cannot be resumed safely; predict and eval "
            "still read it. Use {overwrite} to train it again, or another {out_dir}", overwrite=True
        )
    if manifest is not None:
        diffs, named = existing.differences(manifest)
        extended = existing.extended_by(manifest) if diffs else None
        if extended is not None:  # the same run on more seeds: add them
            _probe_writable(out_dir)
            return FolderPlan("extend", existing)
        if diffs:
            shown = diffs[:4]
            used = {k: v for k, v in named.items() if any("{" + k + "}" in d for d in shown)}
            raise _folder_error(
                f"{{resume}}: {{out_dir}} {out_dir} holds another run; " + "; ".join(shown)
                + ("; ..." if len(diffs) > 4 else "")
                + ". Resume with the same settings, or use {overwrite} or another {out_dir}",
                resume=True, overwrite=True, **used,
            )
    _probe_writable(out_dir)
    return FolderPlan("resume", existing)


def start_run_folder(
    out_dir: str | Path,
    manifest: RunManifest,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow: Iterable[str] = (),
    resumable: bool = True,
) -> FolderPlan:
    """:func:`check_run_folder`, then act: ``overwrite`` deletes the old run's entries, a new run creates
    the folder and writes ``manifest.json`` first (a resume writes nothing here).

    Returns:
        the :class:`FolderPlan` acted on.
    """
    out_dir = Path(out_dir)
    allow = tuple(allow)
    if _distributed_child():  # DDP re-runs the command in each worker: rank 0 checked and wrote the folder
        return FolderPlan("child")
    plan = check_run_folder(out_dir, manifest, resume=resume, overwrite=overwrite, allow=allow, resumable=resumable)
    if plan.action == "resume":
        return plan
    if plan.action == "extend":
        extend_manifest(out_dir, manifest)
        return plan
    if plan.action == "overwrite":
        logger.warning("--overwrite: deleting the old run in %s", out_dir)
        for entry in _entries(out_dir, allow):
            with writing(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(out_dir, err) from err
    from .checkpoint import atomic_write_text

    with writing(out_dir / MANIFEST_NAME):
        atomic_write_text(out_dir / MANIFEST_NAME, manifest.to_json())
    return plan


def _distributed_child() -> bool:
    """True in a worker process of a multi-device launch (rank > 0), which must not check or write the
    folder that rank 0 already prepared."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def extend_manifest(out_dir: str | Path, manifest: RunManifest) -> None:
    """Add ``manifest``'s new seeds to the manifest in ``out_dir`` (see :meth:`RunManifest.extended_by`).

    Several processes may extend one folder at once (one seed each): the read-merge-write runs under an
    exclusive lock on ``out_dir/.manifest.lock``, so no process drops another's seeds."""
    import fcntl

    out_dir = Path(out_dir)
    with open(out_dir / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            existing = read_manifest(out_dir)
            merged = existing.extended_by(manifest) if existing is not None else manifest
            if merged is None:  # another process wrote a different run meanwhile: the usual refusal
                check_run_folder(out_dir, manifest, resume=True)
                return
            write_manifest(out_dir, merged)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_manifest(out_dir: str | Path, manifest: RunManifest) -> None:
    """Write ``manifest`` into ``out_dir`` (created), atomically (a sub-run's own manifest)."""
    from .checkpoint import atomic_write_text

    out_dir = Path(out_dir)
    with writing(out_dir / MANIFEST_NAME):
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / MANIFEST_NAME, manifest.to_json())


@contextlib.contextmanager
def writing(path: str | Path, *, keep: str = "", resumable: bool = True) -> Iterator[None]:
    """Turn a write fault inside the block into :class:`RunWriteError` naming ``path``.

    A full disk (``ENOSPC``/``EDQUOT``), a read-only file system or a missing permission become one
    message saying what happened and that the files already written are intact (writes are atomic);
    ``keep`` adds what the user keeps, e.g. ``"the best checkpoint of epoch 3"``. Other errors pass.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            what = "the disk is full"
            todo = "free some space, then rerun the same command" + (" with --resume" if resumable else "")
        else:
            what = "the folder is read-only or not yours" if err.errno == errno.EROFS else "permission denied"
            todo = "fix the permissions or choose another --out, then rerun" + (
                " (with --resume to continue)" if resumable else "")
        kept = keep or "the files written before (the last good checkpoint) are intact"
        raise RunWriteError(f"cannot write {path}: {what}; {kept}; {todo}") from err

