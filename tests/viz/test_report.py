"""`build_report`: a self-contained HTML file, checked for content and rendered in headless Chromium."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from medmoe.viz.heatmap import draw_heatmap
from medmoe.viz.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _fake_run(root):
    """A comparison folder with one 2-fold CV run, learning curves, a checkpoint config and a heatmap."""
    run = root / "musk1" / "abmil" / "mammoth"
    metrics = {"auroc": 0.91, "balanced_accuracy": 0.8, "loss": 0.4}
    runs = []
    for fold in range(2):
        d = run / "seed0" / f"fold{fold}"
        (d / "checkpoint").mkdir(parents=True)
        rows = ["epoch,lr,train_loss,val_auroc,val_loss,best,seconds"]
        rows += [f"{e},1e-4,{1 / (e + 1):.3f},{0.6 + 0.05 * e:.3f},{0.7 - 0.05 * e:.3f},True,0.5" for e in range(5)]
        (d / "metrics.csv").write_text("\n".join(rows) + "\n")
        (d / "checkpoint" / "config.json").write_text(json.dumps(
            {"model_name": "abmil.base_mammoth", "model_config": {"in_dim": 166, "patch_embed": "mammoth"},
             "class_names": ["negative", "positive"], "medmoe_version": "0.1.0"}))
        runs.append({"seed": 0, "fold": fold, "best_epoch": 4, "epochs_run": 5, "val": metrics,
                     "test": {k: v + 0.01 * fold for k, v in metrics.items()}})
    summary = {k: [v + 0.005, 0.007] for k, v in metrics.items()}
    (run / "results.json").write_text(json.dumps({
        "model_name": "abmil.base_mammoth", "model_overrides": {}, "train_config": {"epochs": 5, "lr": 1e-4},
        "split_hashes": {"0": "abcdef1234567890"}, "summary": summary, "val_summary": summary, "runs": runs}))
    (root / "comparison.json").write_text(json.dumps({"metrics": ["auroc"], "rows": [
        {"dataset": "musk1", "model": "abmil", "patch_embed": "mammoth", "summary": {"auroc": [0.915, 0.007]}}]}))
    coords = np.stack(np.meshgrid(np.arange(0, 512, 64), np.arange(0, 256, 64)), -1).reshape(-1, 2)
    draw_heatmap(coords, coords[:, 0] + coords[:, 1], 64, max_size=300, out_path=root / "heatmaps" / "attention.png")
    (root / "heatmaps" / "heatmaps.json").write_text(json.dumps({"prediction": "positive", "files": {}}))
    return root


def test_report_is_self_contained(tmp_path):
    root = _fake_run(tmp_path / "run")
    path = build_report(root)
    assert path == root / "report.html"
    text = path.read_text()
    for needle in ("Comparison", "abmil.base_mammoth", "Fold results", "Learning curves", "Heatmaps and expert plots",
                   "0.915 ± 0.007", "seed 0 fold 1", "heatmaps.json", '&quot;in_dim&quot;: 166'):
        assert needle in text, needle
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)  # curves + heatmap
    assert "http://" not in text and "https://" not in text and "<script" not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="nothing to report"):
        build_report(empty)
    with pytest.raises(ValueError, match="does not exist"):
        build_report(tmp_path / "missing")


_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var d = document.createElement('div'); d.id = 'medmoe-check';
  d.textContent = 'IMAGES=' + imgs.length + ' BROKEN=' + broken; document.body.appendChild(d);
});
</script></body>"""


def _dump_dom(html_path):
    out = subprocess.run([CHROMIUM, *FLAGS, "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    m = re.search(r"IMAGES=(\d+) BROKEN=(\d+)", out.stdout)
    assert m, f"chromium did not run the check script: {out.stderr[-500:]}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package `chromium`) is not on PATH")
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    root = _fake_run(tmp_path / "run")
    html = build_report(root).read_text()
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("</body>", _CHECK))
    assert _dump_dom(checked) == (2, 0)  # every image decoded
    # the check is not vacuous: a corrupt image is reported as broken
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("</body>", '<img src="data:image/png;base64,AAAA" alt="bad">' + _CHECK))
    assert _dump_dom(broken) == (3, 1)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, "--window-size=1000,2200", f"--screenshot={shot}", (root / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=False)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2200, 1000)
    assert pixels.std() > 10  # not blank
    assert (pixels.reshape(-1, 3).max(1) - pixels.reshape(-1, 3).min(1) > 60).mean() > 0.01  # coloured plots and heatmap
