"""MkDocs hook: nav entries whose Markdown file does not exist (yet) are dropped instead of failing the build.

Some pages are written by other work in progress (a presets page, the tuning page): listing them in
``mkdocs.yml`` keeps their place in the navigation, and a strict build of a tree without them still passes.
Only entries that point at a ``.md`` file inside ``docs_dir`` are checked; external links stay.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.optional_pages")


def prune_nav(nav: list[Any], docs_dir: Path) -> list[Any]:
    """``nav`` without the entries (and emptied sections) whose page file is missing under ``docs_dir``."""
    kept: list[Any] = []
    for item in nav:
        title, target = next(iter(item.items())) if isinstance(item, dict) else (None, item)
        if isinstance(target, list):
            children = prune_nav(target, docs_dir)
            if children:
                kept.append({title: children})
            continue
        is_page = isinstance(target, str) and target.endswith(".md") and "://" not in target
        if is_page and not (docs_dir / target).is_file():
            log.info("optional page %s is not there: left out of the navigation", target)
            continue
        kept.append(item)
    return kept


def on_config(config: Any, **kwargs: Any) -> Any:
    """MkDocs hook: prune the configured navigation before pages are collected."""
    if config.get("nav"):
        config["nav"] = prune_nav(config["nav"], Path(config["docs_dir"]))
    return config
