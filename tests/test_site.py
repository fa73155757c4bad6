"""`make site`: the committed run as a static site that works offline, checked in a real browser."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from emolib.study.site import build_site, check_in_browser, external_assets

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "figures"
    (src / "notebooks").mkdir(parents=True)
    (src / "monitor").mkdir()
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("plot()")
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode(),
                                                                 "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2,
                                                                      "version_minor": 0},
                        "text/plain": "pooling: 100%"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# 04 · Geometry\n\nThe map of emotions. More text."), code]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nbformat.write(nb, str(src / "notebooks" / "04_geometry.ipynb"))
    (src / "04_map.png").write_bytes(PNG)
    (src / "REPORT.md").write_text("# Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- **04_map**: a map  \n  ![04_map](04_map.png)\n")
    (src / "monitor" / "distressed_user.html").write_text("<!doctype html><html><body><span>token</span></body></html>")
    return src


def test_site_builds_and_loads_nothing_from_the_network(source, tmp_path):
    index = build_site(source, tmp_path / "site")
    site = index.parent
    pages = json.loads((site / "pages.json").read_text())
    assert set(pages) == {"notebooks/04_geometry.html", "report.html", "monitor/distressed_user.html", "index.html"}
    for page in pages:
        text = (site / page).read_text()
        assert not external_assets(text), page
    index_text = index.read_text()
    assert "04 · Geometry" in index_text and "The map of emotions." in index_text
    assert 'src="figures/04_map.png"' in (site / "report.html").read_text()
    assert (site / "figures" / "04_map.png").exists()
    assert "widget-view" not in (site / "notebooks" / "04_geometry.html").read_text()
    assert external_assets('<script src="https://cdn.example/x.js"></script><img src="//a/b.png">')


def test_site_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        build_site(tmp_path / "empty", tmp_path / "site")


@pytest.mark.skipif(not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()
                         and shutil.which("chromedriver")), reason="needs Debian's chromium and chromium-driver")
def test_site_in_headless_chromium(source, tmp_path):
    pytest.importorskip("selenium")
    build_site(source, tmp_path / "site")
    res = check_in_browser(tmp_path / "site")
    assert all(r["loaded"] for r in res.values())
    assert sum(r["images"] for r in res.values()) >= 2
    assert all(r["drawn"] == r["images"] for r in res.values()), res
    assert not any(r["console_errors"] for r in res.values()), res
