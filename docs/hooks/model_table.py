"""MkDocs hook: the model tables of the zoo page, generated from the registry at build time.

``docs/zoo.md`` holds two markers. ``<!-- model-table -->`` becomes one row per MIL ``model.config`` that
:func:`medmoe.list_models` returns (plugins included when they are loaded): the class, the patch embedding,
the parameter count for UNI features (1024-d) and two classes, counted on PyTorch's ``meta`` device (no
memory, no weights), and the model's one-line description. ``<!-- family-table -->`` becomes one row per
segmentation and ViT/MOSAIC name (``medmoe.list_models(family="seg" | "vit")``) with its class and parameter
count (segmentation: one input channel, two classes; MOSAIC: the 18 MedMNIST heads at 28 px).
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- model-table -->"
FAMILY_MARKER = "<!-- family-table -->"
PAGE = "zoo.md"
ENCODER = "uni"


def model_rows() -> list[dict[str, Any]]:
    """One dict per registered ``model.config``: name, class, patch embedding, parameters, description."""
    import torch

    import medmoe
    from medmoe.registry import get_config, get_entry

    rows = []
    for name in medmoe.list_models():
        with torch.device("meta"):
            model = medmoe.create_model(f"{name}.{ENCODER}", num_classes=2)
        config = get_config(f"{name}.{ENCODER}", num_classes=2)
        rows.append({
            "name": name,
            "class": type(model).__name__,
            "patch_embed": str(getattr(config, "patch_embed", "")),
            "parameters": sum(p.numel() for p in model.parameters()),
            "description": get_entry(name.split(".")[0]).description,
        })
    return rows


def render_model_table() -> str:
    """The zoo as a Markdown table (the description is shown once per model, on its first config)."""
    lines = [
        "| name | class | patch embedding | parameters (UNI, 2 classes) | description |",
        "|---|---|---|---|---|",
    ]
    previous = None
    for row in model_rows():
        model = row["name"].split(".")[0]
        description = row["description"].replace("|", "\\|") if model != previous else ""
        previous = model
        lines.append(f"| `{row['name']}` | `{row['class']}` | {row['patch_embed']} | "
                     f"{row['parameters']:,} | {description} |")
    return "\n".join(lines)


def family_rows() -> list[dict[str, Any]]:
    """One dict per segmentation and ViT/MOSAIC name: name, family, class, parameters, what it is."""
    import medmoe

    rows = []
    for family in ("seg", "vit"):
        for name in medmoe.list_models(family=family):
            kwargs = {"datasets": "all", "size": 28} if family == "vit" else {}
            model = build_on_meta_or_cpu(lambda name=name, kwargs=kwargs: medmoe.create_model(name, **kwargs))
            config = model.config
            if family == "vit":
                what = f"MOSAIC, ViT dim {config.vit.embed_dim} x {config.vit.depth} blocks"
            elif type(model).__name__ == "MambaHoME":
                what = "Mamba-HoME"
            else:
                what = f"MONAI {config.arch}"
            rows.append({"name": name, "family": family, "class": type(model).__name__,
                         "parameters": sum(p.numel() for p in model.parameters()), "what": what})
    return rows


def build_on_meta_or_cpu(build: Any) -> Any:
    """``build()`` on the ``meta`` device (no memory), or on the CPU for networks that cannot be built there
    (MONAI's SwinUNETR reads a tensor value while it is built)."""
    import torch

    try:
        with torch.device("meta"):
            return build()
    except RuntimeError:
        return build()


def render_family_table() -> str:
    """The segmentation and ViT/MOSAIC names as a Markdown table."""
    lines = ["| name | family | class | parameters | what |", "|---|---|---|---|---|"]
    for row in family_rows():
        lines.append(f"| `{row['name']}` | {row['family']} | `{row['class']}` | {row['parameters']:,} | {row['what']} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill the markers of ``zoo.md`` with the generated tables."""
    if page.file.src_uri == PAGE and MARKER in markdown:
        markdown = markdown.replace(MARKER, render_model_table())
    if page.file.src_uri == PAGE and FAMILY_MARKER in markdown:
        markdown = markdown.replace(FAMILY_MARKER, render_family_table())
    return markdown
