"""Run folders: where one reproduction keeps everything it made, and the conventions for outputs.

Layout of ``runs/<name>/``::

    stories/            01: generated stories and neutral dialogues (JSONL, resumable)
    activations/        02: pooled activations per story (safetensors)
    vectors.safetensors 02: the EmotionVectors artifact
    metrics/<stage>.json  each stage's measured numbers, next to the paper's where there is one
    notebooks/<stage>.ipynb  the executed notebooks
    stages/<stage>.json   parameters hash, status and wall time (for skipping and the log)
    pipeline.log        one line per stage: start, end, seconds, status
    REPORT.md           generated from metrics/ and the figures' JSON

Figures go to a figures folder (``figures/`` for the committed default run, else
``<run>/figures``): ``<name>.png`` plus ``<name>.json`` holding the caption and every number drawn.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_dir(path: str | Path) -> Path:
    """Resolve and create a run folder (relative paths are taken from the repository root)."""
    p = Path(path)
    if not p.is_absolute():
        p = REPO_ROOT / p
    p.mkdir(parents=True, exist_ok=True)
    return p


def _clean(obj: Any) -> Any:
    """Make numbers JSON-safe: tensors/arrays to lists, NaN/inf to None."""
    try:
        import numpy as np
        import torch
    except ImportError:  # pragma: no cover
        np = torch = None
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    if np is not None and isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(_clean(obj), f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def figures_dir(path: str | Path) -> Path:
    return run_dir(path)


def save_figure(fig, name: str, data: dict[str, Any], caption: str, figures: str | Path,
                stage: str | None = None, dpi: int = 110) -> Path:
    """Save ``fig`` as ``<figures>/<name>.png`` and its numbers as ``<name>.json``.

    ``caption`` is one sentence saying what the figure shows (the report quotes it); ``data``
    holds every number the figure draws, so tests and the report can read the figure as data.
    """
    out = figures_dir(figures)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    to_palette_png(png)
    write_json(out / f"{name}.json", {"name": name, "stage": stage, "caption": caption, "data": data})
    return png


def to_palette_png(path: str | Path, colors: int = 256) -> Path:
    """Rewrite a saved figure as a 256-colour palette PNG, in place: about a third of the bytes.

    Matplotlib's colour maps are themselves 256-entry tables, so a heatmap loses nothing it drew;
    only anti-aliased edges are snapped to the nearest of 256 colours. The figures folder and the
    executed notebooks (which embed these files) stay small enough to commit. Transparent pixels
    are laid on white first, as the notebook shows them. Deterministic: the same figure gives the
    same bytes.
    """
    from PIL import Image

    path = Path(path)
    with Image.open(path) as im:
        im.load()
    if im.mode in ("RGBA", "LA", "P"):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    pal = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal.save(path, format="PNG", optimize=True)
    return path


def write_metrics(run: str | Path, stage: str, rows: Sequence[dict[str, Any]]) -> Path:
    """Record a stage's headline numbers for the report.

    Each row: ``key`` (stable id), ``label`` (what was measured), ``ours`` (our number),
    optional ``paper`` (the paper's number, as text or number), ``note`` (one sentence).
    """
    for r in rows:
        missing = {"key", "label", "ours"} - set(r)
        if missing:
            raise ValueError(f"metric row {r} lacks {sorted(missing)}")
    return write_json(run_dir(run) / "metrics" / f"{stage}.json", {"stage": stage, "rows": list(rows)})


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All stages' metric rows, in stage order."""
    folder = Path(run) / "metrics"
    rows: list[dict[str, Any]] = []
    for p in sorted(folder.glob("*.json")):
        doc = read_json(p)
        rows.extend(dict(r, stage=doc.get("stage", p.stem)) for r in doc.get("rows", []))
    return rows
