"""The run report: every figure with its one-sentence caption, every measured number beside the
paper's, the stage times, and which commit and machine produced them -- generated, never typed."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from emolib.study.runs import REPO_ROOT, read_json, read_metrics


def commit() -> str:
    """The repository's short commit id, with ``+uncommitted`` when tracked files differ from it.

    ``figures/`` is left out of the comparison: a run rewrites the committed figures as it goes, and
    that must not mark the code it ran as uncommitted."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)figures"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    import torch

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}"
            + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def build_report(run: str | Path, figures: str | Path, profile: str = "") -> Path:
    """Write ``<run>/REPORT.md`` from the stage records, the metrics and the figures' JSON."""
    run, figures = Path(run), Path(figures)
    lines = [f"# Report: profile `{profile}`", "",
             f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} from commit `{commit()}` "
             f"on {machine()}.", "", "## Stages", "", "| stage | status | wall time of its last run (s) | finished | commit |",
             "|---|---|---|---|---|"]
    total = 0.0
    for rec_path in sorted((run / "stages").glob("*.json")):
        rec = read_json(rec_path)
        secs = float(rec.get("seconds") or 0)
        total += secs
        lines.append(f"| {rec['stage']} | {rec.get('status')} | {secs:.0f} | {rec.get('finished', '—')} | "
                     f"{rec.get('commit', '—')} |")
    lines += [f"| total | | {total:.0f} | | |", "", "## Measured numbers beside the paper's", "",
              "| stage | measure | ours | paper | note |", "|---|---|---|---|---|"]
    for r in read_metrics(run):
        lines.append(f"| {r['stage']} | {r['label']} | {_fmt(r['ours'])} | {_fmt(r.get('paper'))} | {r.get('note', '')} |")
    lines += ["", "## Figures", ""]
    head = list(lines)
    out = run / "REPORT.md"
    out.write_text("\n".join(head + _figure_lines(figures, run)) + "\n", encoding="utf-8")
    if not figures.resolve().is_relative_to(run.resolve()):
        # the committed default run: a copy beside its figures, links relative to that folder
        (figures / "REPORT.md").write_text("\n".join(head + _figure_lines(figures, figures)) + "\n", encoding="utf-8")
    return out


def _figure_lines(figures: Path, where: Path) -> list[str]:
    """One bullet per figure (caption + image), image paths relative to ``where``."""
    lines = []
    for meta_path in sorted(figures.glob("*.json")):
        meta = read_json(meta_path)
        if "caption" not in meta:
            continue
        png = meta_path.with_suffix(".png")
        if png.exists():
            lines.append(f"- **{meta_path.stem}**: {meta['caption']}  \n  ![{meta_path.stem}]({os.path.relpath(png, where)})")
    return lines
