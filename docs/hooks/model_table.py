"""MkDocs hook: the MIL model zoo table, generated from the registry at build time.

``docs/zoo.md`` holds the marker ``<!-- model-table -->``; this hook replaces it with one row per
``model.config`` that :func:`medmoe.list_models` returns (plugins included when they are loaded): the class,
the patch embedding, the parameter count for UNI features (1024-d) and two classes, counted on PyTorch's
``meta`` device (no memory, no weights), and the model's one-line description.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- model-table -->"
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


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill the marker of ``zoo.md`` with the generated table."""
    if page.file.src_uri == PAGE and MARKER in markdown:
        return markdown.replace(MARKER, render_model_table())
    return markdown
