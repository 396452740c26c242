"""What a checkpoint load did: :class:`LoadReport`, and :class:`CheckpointMismatchError` when it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CheckpointMismatchError", "LoadReport"]


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model: unknown, missing or mis-shaped tensors (listed)."""


def _short_list(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class LoadReport:
    """The account of one load: nothing the file holds is left out of it.

    Attributes:
        source: the path that was read.
        file_format: ``medmoe``, ``safetensors``, ``torch`` or ``huggingface-folder``.
        key_format: the key layout recognised (``medmoe``, ``mil-lab``, ``clam-repository``,
            ``mammoth-layer``, ...).
        loaded: number of model tensors filled from the file.
        renamed: checkpoint key -> model key, for every tensor whose name changed (prefix strips such as
            ``model.``/``module.`` are summarised in ``notes`` instead).
        ignored: checkpoint key -> reason, for tensors of the file deliberately not loaded (modules the
            reference builds but never uses in its forward pass, a loss function's constant buffer, a
            head the caller chose to replace).
        fresh: model keys left as initialised (a head the file does not have or the caller replaced;
            the rest of the model when only a patch embedding was loaded).
        notes: one-line remarks (prefixes stripped, config inferred, ...).
    """

    source: str
    file_format: str
    key_format: str
    loaded: int = 0
    renamed: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable, a few lines: what was mapped, ignored and freshly initialised."""
        lines = [f"loaded {self.loaded} tensors from {self.source} ({self.file_format}, {self.key_format} keys)"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.renamed:
            pairs = [f"{a} -> {b}" for a, b in self.renamed.items()]
            lines.append(f"  renamed {len(pairs)}: {_short_list(pairs, 8)}")
        if self.ignored:
            by_reason: dict[str, list[str]] = {}
            for key, why in self.ignored.items():
                by_reason.setdefault(why, []).append(key)
            for why, keys in by_reason.items():
                lines.append(f"  not loaded ({why}): {_short_list(keys)}")
        if self.fresh:
            lines.append(f"  freshly initialised (not in the file): {_short_list(self.fresh)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
