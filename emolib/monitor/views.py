"""Views of a :class:`emolib.monitor.trace.MonitorTrace`: a multi-emotion token heatmap in HTML and a
line plot of selected emotions over the tokens.

The heatmap follows the paper's display convention through :mod:`emolib.monitor.heatmap` (one scale per
transcript: the 99th percentile of ``|value|`` over every displayed emotion, so a quiet emotion
looks pale beside one that fires). What this module adds for monitoring: one coloured block per
emotion, a label at each turn start, hovering a token lists the emotions that score highest there
(among all monitored emotions, not only the displayed ones), and tokens where an alert fired are
outlined. The HTML is self-contained -- inline CSS, no script, no external asset -- so a saved
file opens anywhere offline and survives renderers that strip JavaScript.

Values are z-scores against the neutral calibration when the trace has one (so "+3" means three
neutral standard deviations), else the raw smoothed scores.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emolib.monitor.heatmap import NEWLINE_MARK, token_heat
from emolib.monitor.trace import MonitorTrace

_CSS = """
.emo-monitor { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; line-height: 1.75; }
.emo-monitor h3 { font-family: sans-serif; font-size: 13px; margin: 10px 0 2px 0; }
.emo-monitor .note { color: #666; font-family: sans-serif; font-size: 11px; }
.emo-monitor .turn { font-family: sans-serif; font-size: 10px; color: #fff; background: #555;
  border-radius: 3px; padding: 0 3px; margin: 0 3px 0 0; }
.emo-monitor .turn.user { background: #7a5c00; }
.emo-monitor .turn.assistant { background: #1f5f8b; }
.emo-monitor .alert { outline: 2px solid #d4000f; outline-offset: -1px; }
.emo-monitor .tok { white-space: pre-wrap; }
"""


@dataclass
class HtmlView:
    """An HTML view: :attr:`fragment` for a notebook cell, :meth:`document` / :meth:`save` for a file."""

    body: str
    title: str = "emotion monitor"
    css: str = _CSS

    @property
    def fragment(self) -> str:
        """The view with its style inline, for embedding (a notebook output cell)."""
        return f"<style>{self.css}</style>{self.body}"

    def _repr_html_(self) -> str:  # Jupyter displays this
        return self.fragment

    def document(self) -> str:
        """A complete, self-contained HTML5 document (style in the head, no script, no link)."""
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>{html.escape(self.title)}</title>\n<style>{self.css}</style>\n</head>\n<body>\n"
                f"{self.body}\n</body>\n</html>\n")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.document(), encoding="utf-8")
        return path


def _values(trace: MonitorTrace, kind: str) -> tuple[np.ndarray, str]:
    if kind == "auto":
        kind = "z" if trace.calibration is not None else "score"
    if kind == "z":
        return trace.z().numpy().astype(np.float64), "z vs neutral"
    if kind == "score":
        return trace.scores.numpy().astype(np.float64), "score"
    raise ValueError(f"kind must be 'auto', 'z' or 'score', got {kind!r}")


def _colour(v: float) -> str:
    """White at 0, red towards +1, blue towards -1; grey where there is no value."""
    if not math.isfinite(v):
        return "#d9d9d9"
    v = max(-1.0, min(1.0, v))
    a = 1.0 - 0.75 * abs(v)
    r, g, b = (1.0, a, a) if v >= 0 else (a, a, 1.0)
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in (r, g, b))


def top_emotions(row: np.ndarray, emotions: Sequence[str], n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` highest-valued emotions of one token (NaN ignored)."""
    finite = np.where(np.isfinite(row), row, -np.inf)
    order = np.argsort(-finite)[:n]
    return [(emotions[i], float(row[i])) for i in order if np.isfinite(row[i])]


def heatmap_view(trace: MonitorTrace, emotions: Sequence[str], kind: str = "auto", top: int = 5,
                 q: float = 99.0, title: str = "", note: str = "") -> HtmlView:
    """One coloured block per emotion in ``emotions``; hover a token for its top emotions.

    The colour scale is shared by all displayed emotions (the paper's p99 of ``|value|``,
    computed by :func:`emolib.monitor.heatmap.token_heat`); tokens without a score are grey.
    """
    vals, label = _values(trace, kind)
    ems = list(emotions)
    cols = [trace.emotions.index(e) for e in ems]
    shown = vals[:, cols]
    T = len(trace)
    tokens = trace.chat.tokens[:T]
    scale_heat = token_heat(tokens, shown, probe=0, probes=ems, q=q)
    scale = scale_heat.scale
    alert_at: dict[int, list[str]] = {}
    for a in trace.alerts:
        alert_at.setdefault(a.token_index, []).append(a.rule)
    tips = []
    for t in range(T):
        head = f"#{t} {trace.chat.roles[t]} (turn {trace.chat.turns[t]}) {tokens[t]!r}"
        tops = top_emotions(vals[t], trace.emotions, top)
        body = "; ".join(f"{e} {v:+.2f}" for e, v in tops) if tops else "no score (skipped token)"
        extra = (" | ALERT: " + ", ".join(alert_at[t])) if t in alert_at else ""
        tips.append(html.escape(f"{head} | top {label}: {body}{extra}", quote=True))
    starts = {i: (turn, role) for i, turn, role in trace.chat.turn_starts()}
    out = ['<div class="emo-monitor">']
    if title:
        out.append(f"<h3>{html.escape(title)}</h3>")
    out.append(f'<div class="note">{html.escape(label)}; colour scale shared by the emotions shown: '
               f"p{q:g} of |value| = {scale:.3g}. Red = above, blue = below. Outlined tokens: an alert fired. "
               f"{html.escape(note)}</div>")
    for j, e in enumerate(ems):
        out.append(f"<h3>{html.escape(e)}</h3><div>")
        for t in range(T):
            if t in starts:
                turn, role = starts[t]
                if t > 0:
                    out.append("<br>")
                out.append(f'<span class="turn {html.escape(role)}">{html.escape(role)} {turn}</span>')
            v = shown[t, j] / scale if math.isfinite(shown[t, j]) else math.nan
            text = html.escape(tokens[t].replace("\n", NEWLINE_MARK))
            cls = "tok alert" if t in alert_at else "tok"
            out.append(f'<span class="{cls}" style="background:{_colour(v)}" title="{tips[t]}">{text}</span>')
            if "\n" in tokens[t] and t + 1 not in starts:
                out.append("<br>")
        out.append("</div>")
    out.append("</div>")
    return HtmlView(body="".join(out), title=title or "emotion monitor")


def trace_figure(trace: MonitorTrace, emotions: Sequence[str], kind: str = "auto", marker_index: int | None = None,
                 title: str = "", ax=None) -> tuple[Any, dict[str, Any]]:
    """Selected emotions over the tokens, turn boundaries as dotted lines labelled with the role,
    alerts as triangles on their emotion's line (or at the bottom if that emotion is not drawn),
    and ``marker_index`` (where the problematic text begins) as a red dashed line.

    Returns ``(figure, data)``, ``data`` holding every number drawn (for ``save_figure``).
    """
    import matplotlib.pyplot as plt

    vals, label = _values(trace, kind)
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 3.6))
    else:
        fig = ax.figure
    x = np.arange(len(trace))
    colours = {}
    series = {}
    for e in emotions:
        y = vals[:, trace.emotions.index(e)]
        (line,) = ax.plot(x, y, lw=1.2, label=e)
        colours[e] = line.get_color()
        series[e] = [None if not math.isfinite(v) else round(float(v), 5) for v in y]
    starts = trace.chat.turn_starts()
    # Role labels sit at the top of the axes; a label that would touch the previous one (turns a few
    # tokens apart, e.g. a template's system prompt then the user) drops one line lower.
    min_gap = 0.045 * max(len(trace), 1)
    last_x, level = -math.inf, 0
    for i, _turn, role in starts:
        ax.axvline(i, color="#888", ls=":", lw=0.8)
        level = (level + 1) % 2 if i - last_x < min_gap else 0
        last_x = i
        ax.text(i + 1, 1.0 - 0.06 * level, f"{role}", transform=ax.get_xaxis_transform(), fontsize=7, va="top",
                color="#444")
    if trace.chat.prompt_len and trace.chat.prompt_len < len(trace):
        ax.axvspan(trace.chat.prompt_len, len(trace) - 1, color="#e8f1fa", zorder=0, label="generated")
    drawn_alerts = []
    bottom = np.nanmin(vals[:, [trace.emotions.index(e) for e in emotions]]) if len(trace) else 0.0
    undrawn = list(dict.fromkeys(a.emotion for a in trace.alerts if a.emotion not in colours))
    for a in trace.alerts:
        if a.emotion in colours:
            yv = vals[a.token_index, trace.emotions.index(a.emotion)]
            ax.plot([a.token_index], [yv], marker="^" if a.above else "v", ms=7,
                    color=colours[a.emotion], mec="k", mew=0.6, zorder=5)
        else:
            yv = bottom
            ax.plot([a.token_index], [yv], marker="|", ms=10, color="#d4000f", zorder=5)
        drawn_alerts.append({"rule": a.rule, "token_index": a.token_index, "y": float(yv)})
    if undrawn:  # a legend entry, so the ticks at the bottom are not a mystery
        ax.plot([], [], marker="|", ms=10, ls="none", color="#d4000f",
                label=f"alert on an emotion not drawn ({', '.join(undrawn)})")
    if marker_index is not None:
        ax.axvline(marker_index, color="#d4000f", ls="--", lw=1.2, label="problem text begins")
    if kind in ("auto", "z") and trace.calibration is not None:
        ax.axhline(0, color="#bbb", lw=0.6)
    ax.set_xlabel("token")
    ax.set_ylabel(label)
    ax.set_xlim(0, max(len(trace) - 1, 1))
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(len(emotions) + 2, 7), loc="upper left", bbox_to_anchor=(0, -0.18), frameon=False)
    fig.tight_layout()
    data = {"kind": label, "emotions": list(emotions), "values": series,
            "turn_starts": [{"token_index": i, "turn": t, "role": r} for i, t, r in starts],
            "alerts": drawn_alerts, "marker_index": marker_index, "prompt_len": trace.chat.prompt_len,
            "layers": trace.layers, "window": trace.window}
    return fig, data


def alert_rate_figure(rows: Sequence[dict[str, Any]], title: str = "") -> tuple[Any, dict[str, Any]]:
    """Bars of alerts per 1000 tokens, one per conversation (``rows``: name, alerts_per_1k, kind)."""
    import matplotlib.pyplot as plt

    palette = {"control": "#4c9a2a", "neutral": "#8c8c8c", "scenario": "#c0392b"}
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    names = [r["name"] for r in rows]
    rates = [float(r["alerts_per_1k"]) for r in rows]
    ax.barh(range(len(rows)), rates, color=[palette.get(r.get("kind", "scenario"), "#555") for r in rows])
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    for k, v in enumerate(rates):  # the value at each bar's end (a rate of 0 has no visible bar)
        ax.text(v, k, f" {v:.1f}", va="center", fontsize=7)
    ax.margins(x=0.08)
    kinds = list(dict.fromkeys(r.get("kind", "scenario") for r in rows))
    if len(kinds) > 1:  # say what the bar colours mean
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=palette.get(k, "#555"), label=k) for k in kinds], fontsize=7,
                  loc="lower right")
    ax.set_xlabel("alerts per 1000 tokens")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig, {"rows": [{k: r[k] for k in ("name", "alerts_per_1k", "kind") if k in r} for r in rows]}
