"""`medmoe report` on a run folder from someone else: every value escaped, odd JSON types and a
decompression-bomb PNG skipped with a note, never a traceback (issue 23, silent item 6)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medmoe.cli.main import app
from medmoe.viz.report import MAX_IMAGE_PIXELS, build_report

EVIL = '<script>alert(1)</script>"\'><img src=x onerror=alert(2)>'


def _png(path: Path, colour: tuple[int, int, int] = (10, 120, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), colour, np.uint8)).save(path)


def _bomb_png(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit grey PNG of side x side pixels (400 megapixels) in about 50 kB of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag and its attributes, as an HTML parser (a browser) reads them."""
    from html.parser import HTMLParser

    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect().feed(html)
    return found


def _hostile_run(root: Path) -> None:
    """Every file and field the report reads, each holding markup."""
    cv = root / "cv"
    fold = cv / "seed0" / "fold0"
    (fold / "checkpoint").mkdir(parents=True)
    (cv / "results.json").write_text(json.dumps({
        "model_name": EVIL,
        "runs": [{"seed": EVIL, "fold": EVIL, "best_epoch": EVIL, "epochs_run": EVIL, "test": {EVIL: EVIL}}],
        "summary": {EVIL: [0.5, 0.1], "auroc": EVIL},
        "val_summary": {EVIL: EVIL},
        "split_hashes": {EVIL: EVIL},
        "model_overrides": {EVIL: EVIL},
        "train_config": {EVIL: EVIL},
    }))
    (fold / "metrics.csv").write_text(f"epoch,train_loss,val_loss,val_{EVIL.replace(',', ';')}$x^{{\n0,1,1,0.5\n")
    (fold / "checkpoint" / "config.json").write_text(json.dumps(
        {"model_config": {EVIL: EVIL}, "class_names": [EVIL], "medmoe_version": EVIL}))
    (root / "comparison.json").write_text(json.dumps({
        "metrics": [EVIL],
        "rows": [{"dataset": EVIL, "model": EVIL, "patch_embed": EVIL, "summary": {EVIL: EVIL}}],
    }))
    _png(root / "comparison.png")
    lone = root / "lone"
    (lone / "checkpoint").mkdir(parents=True)
    (lone / "metrics.csv").write_text("epoch,train_loss\n0,1\n")
    (lone / "fold_result.json").write_text(json.dumps({"test_metrics": {EVIL: EVIL}, "val": {EVIL: EVIL}}))
    (lone / "checkpoint" / "config.json").write_text(json.dumps(
        {k: EVIL for k in ("model_name", "model_config", "train_config", "class_names", "seed", "split_hash",
                           "medmoe_version")}))
    maps = root / "maps" / "<b>folder</b>"
    _png(maps / f"{EVIL.replace('/', '_')}.png")
    (maps / "heatmaps.json").write_text(json.dumps({"prediction": EVIL, EVIL: [EVIL]}))
    (maps / "expert_stats.json").write_text(json.dumps({EVIL: EVIL}))


def test_every_value_is_escaped(tmp_path):
    _hostile_run(tmp_path)
    html = build_report(tmp_path, title=EVIL).read_text()
    assert "<script" not in html.lower()
    tags = _tags(html)  # what a browser sees: only our tags and attributes, every image inlined
    assert {t for t, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul",
                                    "li", "a", "code", "table", "thead", "tbody", "tr", "th", "td", "pre", "figure",
                                    "img", "figcaption", "div", "details", "summary"}
    assert not [a for _, attrs in tags for a, _ in attrs if a.startswith("on")]
    assert all(dict(attrs)["src"].startswith("data:image/") for t, attrs in tags if t == "img")
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 15  # the values are shown, escaped
    for shown in ("seed", "fold", "split hashes", "Comparison", "Training run", "folder"):
        assert shown in html


def test_odd_json_types_are_left_out(tmp_path):
    run = tmp_path / "cv"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"runs": "not a list", "summary": [1, 2], "split_hashes": 3}))
    (tmp_path / "comparison.json").write_text(json.dumps({"metrics": "auroc", "rows": {"a": 1}}))
    (tmp_path / "x.json").write_text("[")
    html = build_report(tmp_path).read_text()
    assert "0 runs" in html and "Comparison" in html


def test_a_400_megapixel_png_is_skipped_with_a_note(tmp_path):
    """Before: PIL's decompression-bomb error ended `medmoe report` in a traceback."""
    _png(tmp_path / "maps" / "small.png")
    _bomb_png(tmp_path / "maps" / "bomb.png")
    assert (tmp_path / "maps" / "bomb.png").stat().st_size < 200_000
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert "skipped maps/bomb.png: 20000 x 20000 px (400 megapixels)" in html
    assert f"{MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit" in html
    assert html.count('<img src="data:image/') == 1 and "1 image(s)" in html
