"""MkDocs hook: the command-line reference, generated from the typer app at build time.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with one section per
command of ``medmoe.cli.main.app`` (walked through its click command tree): the command's help text, its
usage line and a table of its arguments and options as ``--help`` prints them. A new command therefore
appears in the site without anyone writing its page (``tests/test_docs.py`` checks that every command does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MARKER = "<!-- cli-reference -->"
PAGE = "cli.md"


def iter_commands(command: Any, ctx: Any = None, path: tuple[str, ...] = ("medmoe",)) -> Iterator[tuple]:
    """Yield ``(path, command, context)`` for ``command`` and every visible subcommand, depth first.

    Args:
        command: a click command or group (typer's vendored click).
        ctx: the parent click context (``None`` for the root).
        path: the words that invoke ``command``, e.g. ``("medmoe", "mil", "train")``.
    """
    ctx = command.context_class(command, info_name=path[-1], parent=ctx)
    yield path, command, ctx
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            yield from iter_commands(sub, ctx, (*path, name))


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell (no HTML, no column breaks, one line)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(text.split())


def _prose(text: str) -> str:
    """A command's help text as Markdown paragraphs (click's ``\\b`` no-rewrap markers dropped)."""
    text = text.replace("\b\n", "").replace("\b", "")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def command_section(path: tuple[str, ...], command: Any, ctx: Any) -> str:
    """Markdown for one command: heading, help, usage, and a table of its parameters."""
    lines = [f"## {' '.join(path)}", ""]
    if command.help:
        lines += [_prose(command.help), ""]
    lines += ["```text", command.get_usage(ctx), "```", ""]
    subcommands = sorted(n for n, c in getattr(command, "commands", {}).items() if not c.hidden)
    if subcommands:
        lines += ["Commands: " + ", ".join(f"[`{n}`](#{'-'.join((*path, n))})" for n in subcommands), ""]
    rows = []
    for param in command.get_params(ctx):
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is None:  # click gives none for arguments: name, metavar and typer's help instead
            record = (param.make_metavar(ctx) if hasattr(param, "make_metavar") else param.name.upper(),
                      getattr(param, "help", "") or "")
        names, help_text = record
        kind = "argument" if param.param_type_name == "argument" else "option"
        rows.append(f"| `{names}` | {kind} | {_cell(help_text or '')} |")
    if rows:
        lines += ["| parameter | kind | description |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def render_cli_reference() -> str:
    """The whole reference: one section per command of ``medmoe``, in command-tree order."""
    import typer

    from medmoe.cli.main import app

    root = typer.main.get_command(app)
    return "\n".join(command_section(p, c, x) for p, c, x in iter_commands(root))


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill the marker of ``cli.md`` with the generated reference."""
    if page.file.src_uri == PAGE and MARKER in markdown:
        return markdown.replace(MARKER, render_cli_reference())
    return markdown
