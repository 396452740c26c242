"""The documentation site's generated parts: the CLI reference covers every command, the zoo table every
registered config, and missing optional pages drop out of the navigation instead of breaking the build.

The full strict build (`mkdocs build --strict`) runs in `make test` / `make docs`; these tests exercise the
build hooks in docs/hooks/ directly, so a new command or model without documentation fails here too.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml

pytest.importorskip("mkdocs", reason="the `docs` extra (mkdocs, mkdocs-material, mkdocstrings) is not installed")

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "hooks"


def _hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"medmoe_docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_commands() -> list[tuple[tuple[str, ...], object, object]]:
    """Every visible command of the typer app with its click context, walked here (not by the hook)."""
    import typer

    from medmoe.cli.main import app

    found = []

    def walk(command, parent, path):  # type: ignore[no-untyped-def]
        ctx = command.context_class(command, info_name=path[-1], parent=parent)
        found.append((path, command, ctx))
        for name, sub in getattr(command, "commands", {}).items():
            if not sub.hidden:
                walk(sub, ctx, (*path, name))

    walk(typer.main.get_command(app), None, ("medmoe",))
    return found


def _sections(markdown: str) -> dict[str, str]:
    """The generated reference split at its level-2 headings: heading text -> section body."""
    parts = re.split(r"(?m)^## (.+)$", markdown)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_cli_reference_documents_every_command_and_option() -> None:
    sections = _sections(_hook("cli_reference").render_cli_reference())
    commands = _all_commands()
    assert len(commands) > 20  # the walk found the real tree (mil, seg, mosaic, bench groups and more)
    for path, command, ctx in commands:
        title = " ".join(path)
        assert title in sections, f"`{title}` has no section in the generated CLI reference"
        body = sections[title]
        assert command.get_usage(ctx) in body
        if command.help:
            first_words = " ".join(command.help.split()[:4]).replace("<", "&lt;").replace(">", "&gt;")
            assert first_words in " ".join(body.split()), f"`{title}`: its help text is missing"
        for param in command.get_params(ctx):
            if param.name == "help" or param.hidden:
                continue
            names = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []
            for name in names:
                assert name in body, f"`{title}`: option {name} is not documented"
    assert set(sections) == {" ".join(p) for p, _, _ in commands}  # and nothing that is not a command


def test_cli_reference_fills_only_the_cli_page() -> None:
    hook = _hook("cli_reference")
    page = SimpleNamespace(file=SimpleNamespace(src_uri="cli.md"))
    other = SimpleNamespace(file=SimpleNamespace(src_uri="mil.md"))
    text = f"# Command line\n\n{hook.MARKER}\n"
    filled = hook.on_page_markdown(text, page=page)
    assert hook.MARKER not in filled and "## medmoe mil train" in filled
    assert hook.on_page_markdown(text, page=other) == text
    assert hook.MARKER in (ROOT / "docs" / "cli.md").read_text()


def test_zoo_table_lists_every_registered_config() -> None:
    import medmoe

    hook = _hook("model_table")
    table = hook.render_model_table()
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    names = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]
    assert names == medmoe.list_models()
    abmil = next(row for row in rows if row.startswith("| `abmil.base` |"))
    # ABMIL (MIL-Lab / FEATHER): 919,169 parameters without the classifier, + Linear(512, 2) = 920,195
    assert "| 920,195 |" in abmil
    assert hook.MARKER in (ROOT / "docs" / "zoo.md").read_text()


def test_missing_optional_pages_leave_the_nav(tmp_path: Path) -> None:
    hook = _hook("optional_pages")
    (tmp_path / "here.md").write_text("# here\n")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "nn.md").write_text("# nn\n")
    nav = [
        {"Home": "here.md"},
        {"Later": "not-yet.md"},
        {"Group": [{"Gone": "gone.md"}]},
        {"API": [{"Layers": "api/nn.md"}, {"Engine": "api/engine.md"}]},
        {"Elsewhere": "https://example.org/page.md"},
        "here.md",
    ]
    assert hook.prune_nav(nav, tmp_path) == [
        {"Home": "here.md"},
        {"API": [{"Layers": "api/nn.md"}]},
        {"Elsewhere": "https://example.org/page.md"},
        "here.md",
    ]


def test_site_config_names_existing_hooks_and_pages() -> None:
    """Every hook in mkdocs.yml exists, and every nav page exists except the ones other work adds later."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    for hook in config["hooks"]:
        assert (ROOT / hook).is_file(), hook
    kept = _hook("optional_pages").prune_nav(config["nav"], ROOT / "docs")

    def pages(nav):  # type: ignore[no-untyped-def]
        for item in nav:
            target = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(target) if isinstance(target, list) else [target]

    kept_pages = set(pages(kept))
    for required in ("index.md", "getting-started.md", "cli.md", "zoo.md", "api/models.md", "differences.md"):
        assert required in kept_pages


def _demo_table(markdown: str) -> list[str]:
    """The rows of the table under the demo heading (`make demo` = `medmoe demo`), header included."""
    after = markdown[markdown.index("### The demo (`make demo` = `medmoe demo`)") :]
    lines = after.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| dataset | model | patch_embed |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_readme_starts_with_the_two_commands_and_links_to_existing_pages() -> None:
    """The README is the newcomer's page: it begins with `make demo` and `make test`, and every relative link
    in it points to a file of the repository (the docs pages hold the rest)."""
    readme = (ROOT / "README.md").read_text()
    assert readme.splitlines()[2:6] == [
        "```bash",
        "make demo   # set up .venv, then run the main job: linear vs Mammoth MIL on real benchmarks (Musk1, UCSB breast)",
        "make test   # set up .venv, then run the test suite",
        "```",
    ]
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link.split("#")[0] for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_readme_demo_table_is_the_one_on_the_results_page() -> None:
    """The demo table in the README is the one docs/reproducing.md explains (both from one `make demo` run)."""
    readme = _demo_table((ROOT / "README.md").read_text())
    page = _demo_table((ROOT / "docs" / "reproducing.md").read_text())
    assert len(readme) == 10  # header, rule, 2 datasets x 2 models x 2 patch embeddings
    assert readme == page


def _ilse_table(markdown: str) -> list[str]:
    """The rows of the Ilse et al. 2018 summary table (header included)."""
    lines = markdown.splitlines()
    start = lines.index("| dataset | gated (`ilse.base`) | paper | plain (`ilse.attention`) | paper | MIL-Lab ABMIL, same "
                        "protocol |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_readme_ilse2018_table_is_computed_from_the_committed_runs() -> None:
    """The README's Ilse et al. 2018 table and the results page's are what benchmarks/ilse2018/table.py
    --summary computes from the committed per-fold results: no number typed by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ilse_table", ROOT / "benchmarks" / "ilse2018" / "table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    computed = table.summary_table(ROOT / "benchmarks" / "results" / "ilse2018")
    assert len(computed) == 5 and all("—" not in row for row in computed)
    assert _ilse_table((ROOT / "README.md").read_text()) == computed
    assert _ilse_table((ROOT / "docs" / "reproducing.md").read_text()) == computed


def test_zoo_family_table_lists_the_segmentation_and_mosaic_names() -> None:
    pytest.importorskip("monai")
    import medmoe

    hook = _hook("model_table")
    table = hook.render_family_table()
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    names = [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]
    assert names == medmoe.list_models(family="seg") + medmoe.list_models(family="vit")
    assert "| `unet.small` | seg | `MonaiSegNet` | 150,633 | MONAI UNet |" in rows
    assert hook.FAMILY_MARKER in (ROOT / "docs" / "zoo.md").read_text()
