"""A static site of the committed run: the executed notebooks, the report and the monitor views.

``make site`` (``python -m emolib.study.site``) renders, from ``figures/`` (the committed default
run), into ``site/``:

* ``index.html``: one page that links everything, with each notebook's title and first paragraph;
* ``notebooks/<stage>.html``: each executed notebook (nbconvert's lab template; figures are
  embedded in the page as data, so nothing is fetched);
* ``report.html``: ``REPORT.md`` as HTML, its figure links pointing at copies in ``figures/``;
* ``monitor/*.html``: the monitor's self-contained token heatmaps.

Everything works from ``file://`` with no network: nbconvert's links to a CDN (require.js,
MathJax, widget and mermaid scripts) are switched off, and :func:`external_assets` lists anything
that would still load from the network (a test asserts the list is empty).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from pathlib import Path

from emolib.study.runs import REPO_ROOT

_EXTERNAL = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["'](https?:)?//""", re.IGNORECASE)


def external_assets(page: str) -> list[str]:
    """Tags of ``page`` that would load something over the network (scripts, styles, images, frames)."""
    return [m.group(0) for m in _EXTERNAL.finditer(page)]


def _exporter():
    from nbconvert import HTMLExporter

    exp = HTMLExporter(template_name="lab")
    for trait in ("mathjax_url", "require_js_url", "jquery_url", "widget_renderer_url", "mermaid_js_url",
                  "mermaid_layout_elk_js_url", "jupyter_widgets_base_url"):
        if exp.has_trait(trait):
            setattr(exp, trait, "")
    return exp


def _strip_external(page: str) -> str:
    """Drop script/link tags that point at the network (empty-URL script tags nbconvert still writes too)."""
    page = re.sub(r"""<script\b[^>]*\bsrc\s*=\s*["'](?:https?:)?//[^"']*["'][^>]*>\s*</script>""", "", page, flags=re.I)
    page = re.sub(r"""<script\b[^>]*\bsrc\s*=\s*["']["'][^>]*>\s*</script>""", "", page, flags=re.I)
    page = re.sub(r"""<link\b[^>]*\bhref\s*=\s*["'](?:https?:)?//[^"']*["'][^>]*>""", "", page, flags=re.I)
    return page


WIDGET = "application/vnd.jupyter.widget-view+json"


def _without_widgets(nb):
    """Progress-bar widgets need a widget manager script from a CDN; a static page shows their text instead."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET in data:
                del data[WIDGET]
                data.setdefault("text/plain", "")
    return nb


def notebook_summary(nb) -> tuple[str, str]:
    """The notebook's title (its first heading) and first paragraph, for the index."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.strip():
            lines = cell.source.strip().splitlines()
            title = lines[0].lstrip("#").strip()
            body = " ".join(ln.strip() for ln in lines[1:] if ln.strip())
            first = re.split(r"(?<=\.)\s", body, maxsplit=1)[0] if body else ""
            return title, re.sub(r"[*_`]", "", first)
    return "", ""


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}}
img{{max-width:100%}} table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:2px 6px}}
a{{color:#0645ad}} li{{margin:.4em 0}} code{{background:#f4f4f4}}</style></head><body>{body}</body></html>"""


def build_site(source: str | Path = REPO_ROOT / "figures", out: str | Path = REPO_ROOT / "site") -> Path:
    """Render ``source`` (a run's figures folder with ``notebooks/``, ``REPORT.md``, ``monitor/``) into ``out``."""
    import mistune
    import nbformat

    source, out = Path(source), Path(out)
    nb_dir = source / "notebooks"
    notebooks = sorted(nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
    if not notebooks and not (source / "REPORT.md").exists():
        raise FileNotFoundError(f"{source} has no executed notebooks and no REPORT.md: run `make reproduce` first.")
    if out.exists():
        shutil.rmtree(out)
    (out / "notebooks").mkdir(parents=True)
    exp = _exporter()
    items = []
    for p in notebooks:
        nb = _without_widgets(nbformat.read(str(p), as_version=4))
        body, _ = exp.from_notebook_node(nb, resources={"metadata": {"name": p.stem}})
        (out / "notebooks" / f"{p.stem}.html").write_text(_strip_external(body), encoding="utf-8")
        title, first = notebook_summary(nb)
        items.append((f"notebooks/{p.stem}.html", title or p.stem, first))
    if (source / "REPORT.md").exists():
        figs = out / "figures"
        figs.mkdir()
        for png in source.glob("*.png"):
            shutil.copyfile(png, figs / png.name)
        text = (source / "REPORT.md").read_text(encoding="utf-8")
        text = re.sub(r"\]\((?!https?:)([^)]+\.png)\)", lambda m: f"](figures/{Path(m.group(1)).name})", text)
        (out / "report.html").write_text(PAGE.format(title="Report", body=mistune.html(text)), encoding="utf-8")
        items.append(("report.html", "Report", "Every measured number beside the paper's, every figure with its "
                                               "caption, stage times, commit and machine."))
    monitors = sorted((source / "monitor").glob("*.html")) if (source / "monitor").is_dir() else []
    if monitors:
        (out / "monitor").mkdir()
        for m in monitors:
            shutil.copyfile(m, out / "monitor" / m.name)
            items.append((f"monitor/{m.name}", f"Monitor: {m.stem.replace('_', ' ')}",
                          "Per-token emotion scores of one scenario (hover a token for its values)."))
    links = "".join(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a><br><small>{html.escape(desc)}</small></li>'
                    for href, title, desc in items)
    body = ("<h1>Emotion vectors in a small open model</h1><p>The executed notebooks of the committed run, its "
            "report and its monitor views. Everything here was produced by <code>make reproduce</code>; nothing "
            "is fetched from the network.</p><ul>" + links + "</ul>")
    (out / "index.html").write_text(PAGE.format(title="emolib: the study", body=body), encoding="utf-8")
    (out / "pages.json").write_text(json.dumps([href for href, _, _ in items] + ["index.html"], indent=1))
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emolib.study.site", description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(REPO_ROOT / "figures"))
    ap.add_argument("--out", default=str(REPO_ROOT / "site"))
    ap.add_argument("--check", action="store_true", help="open every page in headless Chromium and report")
    args = ap.parse_args(argv)
    if args.check:
        res = check_in_browser(args.out)
        for page, r in res.items():
            print(f"{page}: loaded={r['loaded']} images drawn {r['drawn']}/{r['images']} "
                  f"console errors {len(r['console_errors'])}" + "".join(f"\n    {e}" for e in r["console_errors"]))
        bad = [p for p, r in res.items() if not r["loaded"] or r["drawn"] < r["images"] or r["console_errors"]]
        print(f"{len(res)} pages, {sum(r['images'] for r in res.values())} images, "
              f"{sum(len(r['console_errors']) for r in res.values())} console errors; {len(bad)} page(s) with problems")
        return 1 if bad else 0
    try:
        index = build_site(args.source, args.out)
    except FileNotFoundError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    print(f"site: {index} (open it in a browser; it works from file://)")
    return 0



def check_in_browser(site: str | Path = REPO_ROOT / "site", chromium: str = "/usr/bin/chromium",
                     driver: str = "/usr/bin/chromedriver", screenshots: str | Path | None = None) -> dict:
    """Open every page of ``site`` from ``file://`` in headless Chromium and count what went wrong.

    Returns, per page, whether it loaded, how many images it has and how many were drawn (loaded
    with a non-zero size), and the console errors. Needs Debian's ``chromium`` and
    ``chromium-driver`` and the ``selenium`` package (``make site-check`` installs nothing itself).
    """
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    site = Path(site).resolve()
    pages = json.loads((site / "pages.json").read_text())
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1600"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    out = {}
    try:
        for page in pages:
            drv.get((site / page).as_uri())
            try:  # big pages (inline images of several MB) can still be decoding when get() returns
                WebDriverWait(drv, 20).until(lambda d: d.execute_script(
                    "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
            except TimeoutException:
                pass  # counted below as not loaded / not drawn
            state = drv.execute_script("return document.readyState")
            images = drv.execute_script(
                "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            errors = [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
            out[page] = {"loaded": state == "complete", "images": len(images),
                         "drawn": sum(1 for ok, w in images if ok and w > 0), "console_errors": errors}
            if screenshots:
                shot = Path(screenshots) / (page.replace("/", "_") + ".png")
                shot.parent.mkdir(parents=True, exist_ok=True)
                drv.save_screenshot(str(shot))
    finally:
        drv.quit()
    return out


if __name__ == "__main__":
    sys.exit(main())
