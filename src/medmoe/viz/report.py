"""One self-contained HTML report per run folder (``medmoe report RUN_DIR``).

The report reads what the trainer, cross-validation, comparisons and heatmap commands wrote and needs
nothing else; every image is inlined as a base64 PNG (JPEG where that is less than half the size), styles are inline, no script or network access:

* **comparison** — ``comparison.json`` (``medmoe mil compare`` / ``medmoe demo``): mean ± std table and
  ``comparison.png``;
* per cross-validation run (every ``results.json`` below ``RUN_DIR``): model, overrides and training
  config, the test/val summary table, one row per fold (seed, fold, best epoch, test metrics) and
  learning curves drawn from each fold's ``metrics.csv`` (train/val loss and the validation metrics);
  a ``medmoe mil tune`` run adds its chosen settings per outer fold (its Optuna plots are images below);
* a lone training run (``metrics.csv`` + ``checkpoint/config.json``) is reported the same way;
* **heatmaps and expert plots** — every other ``.png`` below ``RUN_DIR`` (e.g. the output of
  ``medmoe mil heatmap --out RUN_DIR/heatmaps``), grouped by folder, with ``heatmaps.json`` and
  ``expert_stats.json`` summaries.

A run folder may come from someone else: every value read from it is HTML-escaped, malformed JSON parts
are left out, and an image larger than :data:`MAX_IMAGE_PIXELS` (its size is read from the file header,
before anything is decoded) is skipped with a note in the report.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["MAX_IMAGE_PIXELS", "build_report", "find_runs"]

logger = logging.getLogger(__name__)

#: Images with more pixels are not decoded (a 400-megapixel PNG of a few kB would take gigabytes).
MAX_IMAGE_PIXELS = 64_000_000

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;background:#fff;padding:0 16px}
h1{font-size:1.6em;border-bottom:2px solid #4c72b0;padding-bottom:6px}h2{font-size:1.3em;margin-top:32px;
border-bottom:1px solid #ddd}h3{font-size:1.05em;margin-top:20px}
table{border-collapse:collapse;margin:8px 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#eef2f8}td.l,th.l{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:4px 0}figure{display:inline-block;margin:6px;
vertical-align:top;max-width:100%}figcaption{font-size:.75em;color:#555}
pre{background:#f6f8fa;padding:8px;font-size:.78em;overflow:auto;max-height:320px}
.meta{color:#666;font-size:.85em}.grid figure{max-width:48%}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image from its header alone (PNG: the IHDR chunk; other formats: Pillow's
    lazy open, which decodes nothing); ``None`` when it cannot be read."""
    with path.open("rb") as fh:
        head = fh.read(33)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _load_image(path: Path, notes: list[str], root: Path) -> bytes | None:
    """The bytes of an image to inline, or ``None`` (with a note) when it is unreadable or too large."""
    rel = path.relative_to(root).as_posix()
    try:
        size = _header_size(path)
    except OSError as err:
        notes.append(f"skipped {rel}: cannot read it ({err.strerror or err})")
        return None
    if size is None:
        notes.append(f"skipped {rel}: not a readable image")
        return None
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        notes.append(f"skipped {rel}: {size[0]} x {size[1]} px ({size[0] * size[1] / 1e6:.0f} megapixels) is over "
                     f"the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit of the report")
        logger.warning(notes[-1])
        return None
    return path.read_bytes()


def _data_uri(data: bytes) -> str:
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _shrink(data: bytes, max_side: int) -> bytes:
    """Downscale an image whose longer side exceeds ``max_side``, then keep the smaller of PNG and JPEG
    (quality 88): plots stay crisp PNGs, slide overlays and patch grids become JPEGs (keeps reports small)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            img = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return data
    if max(img.size) > max_side:
        scale = max_side / float(max(img.size))
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                         Image.Resampling.LANCZOS)
    png, jpg = io.BytesIO(), io.BytesIO()
    img.save(png, format="PNG", optimize=True)
    img.save(jpg, format="JPEG", quality=88)
    # JPEG only when it saves at least half: text and flat colours stay lossless.
    return jpg.getvalue() if jpg.tell() < 0.5 * png.tell() else png.getvalue()


def _img(data: bytes, caption: str, alt: str | None = None) -> str:
    return (f'<figure><img src="{_data_uri(data)}" alt="{_esc(alt or caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(t, (int, float)) or t is None for t in v):
        m, s = v
        if m is None:
            return "–"
        return f"{m:.{digits}f} ± {0.0 if s is None or (isinstance(s, float) and math.isnan(s)) else s:.{digits}f}"
    return str(v)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_esc(_fmt(v))}</td>' for i, v in enumerate(r))
        + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dict(v: Any) -> dict[str, Any]:
    """``v`` when it is a mapping, else ``{}`` (a hand-edited or hostile JSON file may hold anything)."""
    return v if isinstance(v, dict) else {}


def _dicts(v: Any) -> list[dict[str, Any]]:
    """The mappings in ``v`` when it is a list, else ``[]``."""
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def find_runs(run_dir: str | os.PathLike) -> list[Path]:
    """Folders below ``run_dir`` (itself included) holding a cross-validation ``results.json``, sorted."""
    root = Path(run_dir)
    return sorted({p.parent for p in root.rglob("results.json") if p.is_file()})


def _learning_curves(fold_dirs: Sequence[tuple[str, Path]], title: str) -> bytes | None:
    """Figure with train/val loss (left) and every validation metric (right), one line per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(name, _read_csv(d / "metrics.csv")) for name, d in fold_dirs]
    series = [(n, rows) for n, rows in series if rows]
    if not series:
        return None
    try:
        with plt.rc_context({"text.parse_math": False}):
            return _draw_curves(plt, series, title)
    except (ValueError, RuntimeError, TypeError) as err:  # e.g. mathtext in a hostile column name
        plt.close("all")
        logger.warning("learning curves left out: %s", err)
        return None


def _draw_curves(plt: Any, series: list[tuple[str, list[dict[str, str]]]], title: str) -> bytes:
    """The learning-curve figure of :func:`_learning_curves` as PNG bytes (text drawn literally)."""
    metric_cols = [c for c in series[0][1][0] if c.startswith("val_") and c != "val_loss"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    cmap = plt.get_cmap("tab10")
    for i, (name, rows) in enumerate(series):
        ep = [_num(r.get("epoch")) for r in rows]
        col = cmap(i % 10)
        axes[0].plot(ep, [_num(r.get("train_loss")) for r in rows], color=col, label=f"{name} train")
        if "val_loss" in rows[0]:
            axes[0].plot(ep, [_num(r.get("val_loss")) for r in rows], color=col, ls="--", label=f"{name} val")
        for j, m in enumerate(metric_cols[:3]):
            axes[1].plot(ep, [_num(r.get(m)) for r in rows], color=col, ls=["-", "--", ":"][j],
                         label=m if i == 0 else None)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss (solid train, dashed val)", fontsize=9)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation metrics (line style = metric, colour = fold)", fontsize=9)
    if metric_cols:
        axes[1].legend(fontsize=7)
    if len(series) <= 6:
        axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _fold_dirs(run: Path) -> list[tuple[str, Path]]:
    out = []
    for seed in sorted(run.glob("seed*")):
        for fold in sorted(seed.glob("fold*"), key=lambda p: (len(p.name), p.name)):
            if (fold / "metrics.csv").is_file():
                out.append((f"{seed.name}/{fold.name}", fold))
    return out


def _config_block(data: Mapping[str, Any]) -> str:
    return f"<pre>{_esc(json.dumps(data, indent=2, default=str))}</pre>"


def _cv_section(run: Path, root: Path, notes: list[str]) -> str:
    res = _dict(_read_json(run / "results.json"))
    rel = run.relative_to(root).as_posix() or "."
    parts = [f'<h2 id="run-{_esc(rel)}">Run: {_esc(res.get("model_name", "?"))} — <code>{_esc(rel)}</code></h2>']
    runs = _dicts(res.get("runs"))
    summary = _dict(res.get("summary"))
    val_summary = _dict(res.get("val_summary"))
    seeds = sorted({str(r.get("seed")) for r in runs}, key=lambda s: (len(s), s))
    hashes = ", ".join(f"{k}: {str(v)[:12]}" for k, v in _dict(res.get("split_hashes")).items())
    parts.append(f'<p class="meta">{len(runs)} runs, seeds {_esc(", ".join(seeds))}; split hashes {_esc(hashes)}</p>')
    if summary:
        parts.append("<h3>Metrics (mean ± std over folds × seeds)</h3>")
        parts.append(_table(["metric", "test", "val"],
                            [[m, summary.get(m), val_summary.get(m)] for m in summary]))
    if runs:
        metrics = list(_dict(runs[0].get("test") or runs[0].get("val")).keys())
        rows = []
        for r in runs:
            t = _dict(r.get("test"))
            rows.append([f"seed {r.get('seed')} fold {r.get('fold')}", r.get("best_epoch"), r.get("epochs_run"),
                         *[t.get(m) for m in metrics]])
        parts.append("<h3>Fold results (test)</h3>")
        parts.append(_table(["run", "best epoch", "epochs", *metrics], rows))
    tuned = _dicts(_dict(res.get("tuning")).get("folds"))  # `medmoe mil tune`: chosen settings per outer fold
    if tuned:
        names = list(dict.fromkeys(str(k) for t in tuned for k in _dict(t.get("params"))))
        parts.append(f"<h3>Chosen settings per outer fold (nested CV; inner {_esc(_dict(res.get('tuning')).get('metric'))}"
                     "; plots under <code>studies/</code>)</h3>")
        parts.append(_table(["outer fold", "inner score", *names],
                            [[f"seed {t.get('seed')} fold {t.get('fold')}", t.get("inner_score"),
                              *[_dict(t.get("params")).get(n) for n in names]] for t in tuned]))
    curves = _learning_curves(_fold_dirs(run), f"learning curves: {res.get('model_name', rel)}")
    if curves:
        parts.append("<h3>Learning curves</h3>" + _img(curves, f"learning curves ({rel})"))
    cfg = {"model_name": res.get("model_name"), "model_overrides": res.get("model_overrides"),
           "train_config": res.get("train_config")}
    ckpt = next((d / "checkpoint" / "config.json" for _, d in _fold_dirs(run)
                 if (d / "checkpoint" / "config.json").is_file()), None)
    if ckpt is not None:
        info = _dict(_read_json(ckpt))
        cfg["model_config"] = info.get("model_config")
        cfg["class_names"] = info.get("class_names")
        cfg["medmoe_version"] = info.get("medmoe_version")
    parts.append("<h3>Config</h3>" + _config_block(cfg))
    return "\n".join(parts)


def _single_run_section(run: Path, root: Path) -> str:
    rel = run.relative_to(root).as_posix() or "."
    info = _dict(_read_json(run / "checkpoint" / "config.json"))
    parts = [f"<h2>Training run — <code>{_esc(rel)}</code></h2>"]
    fold = _dict(_read_json(run / "fold_result.json"))
    for split in ("val", "test"):
        m = fold.get(f"{split}_metrics") or fold.get(split)
        if isinstance(m, dict) and m:
            parts.append(f"<h3>{split} metrics</h3>" + _table(["metric", "value"], list(m.items())))
    curves = _learning_curves([(rel, run)], f"learning curves: {info.get('model_name', rel)}")
    if curves:
        parts.append("<h3>Learning curves</h3>" + _img(curves, "learning curves"))
    if info:
        parts.append("<h3>Config</h3>" + _config_block({k: info.get(k) for k in (
            "model_name", "model_config", "train_config", "class_names", "seed", "split_hash", "medmoe_version")}))
    return "\n".join(parts)


def _comparison_section(root: Path, notes: list[str]) -> str:
    comp = _dict(_read_json(root / "comparison.json"))
    if not comp:
        return ""
    metrics = [str(m) for m in comp.get("metrics") or []] if isinstance(comp.get("metrics"), list) else []
    rows = [[r.get("dataset"), r.get("model"), r.get("patch_embed"), *[_dict(r.get("summary")).get(m)
                                                                       for m in metrics]]
            for r in _dicts(comp.get("rows"))]
    parts = ["<h2>Comparison</h2>", _table(["dataset", "model", "patch_embed", *metrics], rows, left=3)]
    png = root / "comparison.png"
    if png.is_file():
        data = _load_image(png, notes, root)
        if data is not None:
            parts.append(_img(data, "comparison.png"))
    return "\n".join(parts)


def _image_sections(root: Path, max_images: int, max_side: int, notes: list[str]) -> tuple[str, int]:
    skip = {root / "comparison.png"}
    pngs = [p for p in sorted(root.rglob("*.png")) if p not in skip and p.is_file()]
    if not pngs:
        return "", 0
    groups: dict[str, list[Path]] = {}
    for p in pngs[:max_images]:
        groups.setdefault(p.parent.relative_to(root).as_posix() or ".", []).append(p)
    parts = ["<h2>Heatmaps and expert plots</h2>"]
    shown = 0
    if len(pngs) > max_images:
        parts.append(f'<p class="meta">showing {max_images} of {len(pngs)} images</p>')
    for folder, files in groups.items():
        parts.append(f"<h3><code>{_esc(folder)}</code></h3>")
        for name in ("heatmaps.json", "expert_stats.json"):
            data = _read_json(root / folder / name)
            if isinstance(data, dict):
                keep = {k: v for k, v in data.items() if k not in ("files",)}
                parts.append(f"<details><summary>{_esc(name)}</summary>{_config_block(keep)}</details>")
        loaded = [(p, data) for p in files if (data := _load_image(p, notes, root)) is not None]
        shown += len(loaded)
        parts.append('<div class="grid">' + "".join(_img(_shrink(data, max_side), p.name) for p, data in loaded)
                     + "</div>")
    return "\n".join(parts), shown


def build_report(
    run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None, *, title: str | None = None,
    max_images: int = 80, max_image_side: int = 800,
) -> Path:
    """Write one self-contained HTML report of ``run_dir`` (default ``run_dir/report.html``).

    Images below ``run_dir`` are inlined (at most ``max_images``, downscaled to ``max_image_side`` px).

    Raises:
        ValueError: ``run_dir`` is not a folder or holds nothing to report.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"run folder {root} does not exist or is not a folder")
    sections: list[str] = []
    notes: list[str] = []
    comparison = _comparison_section(root, notes)
    if comparison:
        sections.append(comparison)
    runs = find_runs(root)
    for run in runs:
        sections.append(_cv_section(run, root, notes))
    covered = {d for run in runs for _, d in _fold_dirs(run)}
    for csv_path in sorted(root.rglob("metrics.csv")):
        if csv_path.parent not in covered:
            sections.append(_single_run_section(csv_path.parent, root))
    images, n_images = _image_sections(root, max_images, max_image_side, notes)
    if images:
        sections.append(images)
    if not sections:
        raise ValueError(
            f"{root} holds nothing to report (no comparison.json, results.json, metrics.csv or .png); point "
            "medmoe report at the --out folder of `medmoe mil train`, `compare`, `heatmap` or `medmoe demo`"
        )
    name = title or f"medmoe report: {root.resolve().name}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from .. import __version__

    toc = "".join(f'<li><a href="#run-{_esc(r.relative_to(root).as_posix() or ".")}">'
                  f"{_esc(r.relative_to(root).as_posix() or '.')}</a></li>" for r in runs)
    doc = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(name)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{_esc(name)}</h1><p class=\"meta\">{_esc(root.resolve())} — generated {stamp} by medmoe "
        f"{_esc(__version__)}; {len(runs)} cross-validation run(s), {n_images} image(s)</p>"
        + (f"<ul>{toc}</ul>" if len(runs) > 1 else "")
        + "".join(f'<p class="meta">{_esc(n)}</p>' for n in notes)
        + "\n".join(sections)
        + "</body></html>\n"
    )
    out = Path(out_path) if out_path is not None else root / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    os.replace(tmp, out)
    return out
