"""Open the comparison report in headless Chromium: it loads, every figure decodes, the ranking is there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

# Appended to a copy of the page: after load, report what the browser actually decoded.
_CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const table = document.getElementById('ranking');
  const out = document.createElement('pre');
  out.id = 'morphllr-check';
  out.textContent = 'CHECK' + JSON.stringify({
    images: imgs.length, decoded: decoded,
    ranking_rows: table ? table.querySelectorAll('tr').length - 1 : -1,
    first_heading: document.querySelector('h1') ? document.querySelector('h1').textContent : ''
  }) + 'END';
  document.body.appendChild(out);
});
</script>
"""


def _browser_check(page: Path, tmp_path: Path) -> dict:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r"CHECK(\{.*?\})END", done.stdout)
    assert found, f"no check marker in the DOM; chromium said: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (/usr/bin/chromium) is not installed")
def test_report_opens_and_every_figure_decodes(tmp_path):
    from test_compare import _catalog, _images, _models, _write_set

    from morphllr.comparison.run import compare

    rng = np.random.default_rng(0)
    ref = _write_set(tmp_path / "ref.h5", _images(60, 1.0, rng), _catalog(60, rng))
    sim = _write_set(tmp_path / "sim.h5", _images(50, 0.3, rng), _catalog(50, rng))
    obs, arch = _models()
    out = tmp_path / "report"
    compare(obs, arch, reference=("SDSS", ref), sets={"TNG": sim}, out=out, n_boot=100, matched_draws=20,
            gallery_size=4)
    html = (out / "index.html").read_text()
    n_figures = len(list((out / "figures").glob("*.png")))
    assert "src='figures/" not in html  # self-contained: figures are embedded, not linked
    check = _browser_check(out / "index.html", tmp_path)
    assert check["images"] == n_figures >= 8
    assert check["decoded"] == check["images"]
    assert check["ranking_rows"] == 2
    assert "realistic" in check["first_heading"]
