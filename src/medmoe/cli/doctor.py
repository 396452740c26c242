"""Show versions, devices, optional backends and extras (with the command that installs each missing one)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import re

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: Optional compute backends: import name -> (what it is for, how to get it).
BACKENDS = {
    "mamba_ssm": ("fused CUDA selective scan for Mamba (optional)", "pip install mamba-ssm causal-conv1d (CUDA only)"),
    "flash_attn": ("FlashAttention kernels (optional)", "pip install flash-attn (CUDA only)"),
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def extras_status() -> dict[str, list[tuple[str, str | None]]]:
    """``extra -> [(distribution, installed version or None)]`` read from medmoe's own metadata."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    for req in md.requires("medmoe") or []:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?[^;]*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if not m:
            continue
        dist, extra = m.group(1), m.group(3)
        if dist == "medmoe":  # the 'all' extra refers to the others
            continue
        out.setdefault(extra, []).append((dist, _version(dist)))
    return out


def device_lines() -> list[str]:
    import torch

    lines = [f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"CUDA {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
    else:
        lines.append("CUDA: not available" + (" (CPU build of torch)" if torch.version.cuda is None else ""))
    mps = getattr(torch.backends, "mps", None)
    lines.append("MPS: " + ("available" if mps is not None and mps.is_available() else "not available"))
    lines.append(native_kernel_line())
    return lines


def native_kernel_line() -> str:
    """Whether the compiled CPU kernels (Mammoth's dispatch and experts, dropout, depthwise convolutions) build."""
    from ..nn.depthwise_conv import native_depthwise_conv_available
    from ..nn.dropout import native_dropout_available
    from ..nn.expert_epilogue import native_expert_epilogue_available
    from ..nn.native_kernels import kernel_cache_dir, native_kernels_enabled
    from ..nn.slot_dispatch import native_slot_dispatch_available

    if not native_kernels_enabled():
        return "native CPU kernels: off (MEDMOE_NATIVE_KERNELS=0)"
    status = {
        "slot_dispatch": native_slot_dispatch_available(),
        "dropout": native_dropout_available(),
        "depthwise_conv": native_depthwise_conv_available(),
        "expert_epilogue": native_expert_epilogue_available(),
    }
    if all(status.values()):
        return f"native CPU kernels: ready ({', '.join(status)}; cache {kernel_cache_dir()})"
    missing = ", ".join(name for name, ok in status.items() if not ok)
    return (
        f"native CPU kernels: {missing} unavailable, PyTorch is used instead (slower; the same numbers: "
        "dropout masks come from the same counter-based stream, computed with PyTorch ops). Needs g++ with OpenMP on Linux or macOS; set CXX to choose the "
        "compiler; `medmoe -vv doctor` logs the build error"
    )


def doctor() -> None:
    import torch

    from .. import __version__

    console = Console()
    console.print(f"[bold]medmoe[/bold] {__version__}  python {platform.python_version()}  "
                  f"torch {torch.__version__}  ({platform.system()} {platform.machine()})")
    for line in device_lines():
        console.print("  " + line)

    table = Table(title="extras", show_lines=False)
    table.add_column("extra")
    table.add_column("package")
    table.add_column("installed")
    table.add_column("to install")
    for extra, dists in sorted(extras_status().items()):
        missing = [d for d, v in dists if v is None]
        for dist, ver in dists:
            table.add_row(extra, dist, ver or "[red]missing[/red]",
                          escape(f"pip install 'medmoe[{extra}]'") if dist in missing else "")
    console.print(table)

    backends = Table(title="optional backends")
    backends.add_column("module")
    backends.add_column("status")
    backends.add_column("purpose / install")
    for module, (purpose, how) in BACKENDS.items():
        found = importlib.util.find_spec(module) is not None
        backends.add_row(module, "[green]found[/green]" if found else "not installed",
                         purpose if found else f"{purpose}: {how}")
    console.print(backends)
    for line in plugin_lines():
        console.print(line)


def plugin_lines() -> list[str]:
    """One line per MIL-model plugin (entry points of ``medmoe.mil_models`` and ``$MEDMOE_PLUGINS``)."""
    import os
    from importlib import metadata

    from ..registry import PLUGIN_ENV, PLUGIN_GROUP

    found = [f"{ep.name} = {ep.value} (entry point)" for ep in metadata.entry_points(group=PLUGIN_GROUP)]
    found += [f"{s.strip()} (${PLUGIN_ENV})" for s in os.environ.get(PLUGIN_ENV, "").split(",") if s.strip()]
    if not found:
        return [f"model plugins: none (see `{PLUGIN_GROUP}` entry points, ${PLUGIN_ENV}, medmoe --plugin)"]
    return ["model plugins:", *(f"  {line}" for line in found)]
