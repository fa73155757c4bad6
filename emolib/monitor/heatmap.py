"""Token heatmaps: text coloured token by token by a probe's value, as HTML and as a PNG figure.

The paper's token-level pictures (its Figs. 40-51 and the monitoring case studies) colour each
token by a probe's activation, scaled to [-1, 1] by **the 99th percentile of the absolute value
over all probes on that transcript** -- one scale per transcript, shared by every probe, so a
probe that barely moves looks pale next to one that fires. This module does exactly that and
nothing else, so the monitoring stage can reuse it.

API (everything takes plain Python/NumPy/torch inputs; nothing here touches a model):

* :func:`percentile_scale` ``(values, q=99.0) -> float``: the q-th percentile of ``|values|``
  over every entry (``values`` may be ``[tokens]`` or ``[tokens, probes]``); NaNs ignored.
* :func:`scale_values` ``(values, q=99.0, scale=None) -> (scaled, scale)``: ``values / scale``
  clipped to [-1, 1] (``scale`` computed with :func:`percentile_scale` unless given).
* :func:`display_tokens` ``(tokenizer, ids) -> list[str]``: one printable string per token.
* :func:`token_heat` ``(tokens, values, title="", probe=None, probes=None, q=99.0, skip=())``
  -> :class:`TokenHeat`: ``values`` ``[tokens]`` or ``[tokens, probes]``; the scale comes from
  all probes, the colours from ``probe`` (a name in ``probes`` or an index). Positions in
  ``skip`` (e.g. ``[0]``, the attention-sink token) are left out of the scale and drawn grey.
* :func:`heatmap_html` ``(heats) -> str``: HTML for a notebook (``IPython.display.HTML``);
  hovering a token shows its raw and scaled value. Red = positive, blue = negative.
* :func:`heatmap_figure` ``(heats, width_chars=100) -> matplotlib Figure``: the same picture
  laid out in a monospace grid, for ``emolib.study.runs.save_figure``.
* :meth:`TokenHeat.to_dict`: every number drawn (for the figure's JSON).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NEWLINE_MARK = "\u23ce"  # shown where a token holds a line break


def _as_array(values: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(values, dtype=np.float64)


def percentile_scale(values: Any, q: float = 99.0) -> float:
    """The ``q``-th percentile of ``|values|`` over all entries (all probes on one transcript).

    Returns 1.0 when every value is zero or NaN, so scaling never divides by zero.
    """
    a = np.abs(_as_array(values)).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 1.0
    s = float(np.percentile(a, q))
    return s if s > 0 else 1.0


def scale_values(values: Any, q: float = 99.0, scale: float | None = None) -> tuple[np.ndarray, float]:
    """``values / scale`` clipped to [-1, 1], and the scale used (the paper's display scaling)."""
    a = _as_array(values)
    s = percentile_scale(a, q) if scale is None else float(scale)
    if not s > 0:
        raise ValueError(f"scale must be positive, got {s}")
    return np.clip(a / s, -1.0, 1.0), s


def display_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """One printable piece per token (spaces and line breaks stay visible), each character once.

    A multi-byte character split over several byte-level tokens is decoded once, on the first
    of its tokens (the others show nothing), instead of a replacement mark or a repeat per token.
    """
    ids = [int(i) for i in ids]
    out: list[str] = []
    i = 0
    while i < len(ids):
        j = i + 1
        piece = tokenizer.decode(ids[i:j])
        while "\ufffd" in piece and j < len(ids) and j - i < 8:  # an incomplete character: join the next token
            j += 1
            piece = tokenizer.decode(ids[i:j])
        if "\ufffd" in piece:  # not completed within 8 tokens: show each token alone
            j, piece = i + 1, tokenizer.decode(ids[i:i + 1])
        out.extend([piece] + [""] * (j - i - 1))
        i = j
    return out


@dataclass
class TokenHeat:
    """One transcript's tokens with the values to colour them by.

    ``raw`` are the displayed probe's values, ``scaled`` the same in [-1, 1] (NaN where skipped),
    ``scale`` the shared 99th-percentile scale of all probes on this transcript.
    """

    title: str
    tokens: list[str]
    raw: np.ndarray
    scaled: np.ndarray
    scale: float
    probe: str | None = None
    q: float = 99.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "probe": self.probe, "q": self.q, "scale": self.scale,
                "tokens": list(self.tokens), "raw": [None if not np.isfinite(x) else float(x) for x in self.raw],
                "scaled": [None if not np.isfinite(x) else float(x) for x in self.scaled], **self.extra}


def token_heat(tokens: Sequence[str], values: Any, title: str = "", probe: str | int | None = None,
               probes: Sequence[str] | None = None, q: float = 99.0, skip: Sequence[int] = (),
               scale: float | None = None) -> TokenHeat:
    """Build a :class:`TokenHeat` from per-token values ``[tokens]`` or ``[tokens, probes]``.

    The scale is the ``q``-th percentile of ``|values|`` over every probe and every token not in
    ``skip``; the colours show the column ``probe`` (name or index; required for 2-D values).
    """
    a = _as_array(values)
    if a.shape[0] != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but values for {a.shape[0]} positions.")
    keep = np.ones(a.shape[0], dtype=bool)
    for i in skip:
        keep[int(i)] = False
    s = percentile_scale(a[keep], q) if scale is None else float(scale)
    if a.ndim == 1:
        col, name = a, (probe if isinstance(probe, str) else None)
    elif a.ndim == 2:
        if probe is None:
            raise ValueError("values has one column per probe: say which probe to draw (probe=).")
        if isinstance(probe, str):
            if probes is None or probe not in probes:
                raise KeyError(f"probe {probe!r} is not among the probes {list(probes or [])}.")
            j = list(probes).index(probe)
        else:
            j = int(probe)
        col, name = a[:, j], (list(probes)[j] if probes is not None else str(j))
    else:
        raise ValueError(f"values must be [tokens] or [tokens, probes], got shape {a.shape}")
    scaled, _ = scale_values(col, scale=s)
    scaled = np.where(keep, scaled, np.nan)
    return TokenHeat(title=title, tokens=list(tokens), raw=col.copy(), scaled=scaled, scale=s, probe=name, q=q)


def _rgb(v: float) -> tuple[float, float, float]:
    """White at 0, red at +1, blue at -1 (linear blend); grey for NaN (skipped tokens)."""
    if not np.isfinite(v):
        return (0.85, 0.85, 0.85)
    v = float(np.clip(v, -1, 1))
    if v >= 0:
        return (1.0, 1.0 - 0.75 * v, 1.0 - 0.75 * v)
    return (1.0 + 0.75 * v, 1.0 + 0.75 * v, 1.0)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb)


def heatmap_html(heats: TokenHeat | Sequence[TokenHeat]) -> str:
    """HTML for one or several :class:`TokenHeat` (one block each, titled, with its scale)."""
    if isinstance(heats, TokenHeat):
        heats = [heats]
    out = ['<div style="font-family: monospace; font-size: 12px; line-height: 1.7;">']
    for h in heats:
        label = html.escape(h.title) + (f" &mdash; probe <b>{html.escape(h.probe)}</b>" if h.probe else "")
        out.append(f'<div style="margin: 6px 0 2px 0;">{label} <span style="color:#777">'
                   f"(scale: |value| p{h.q:g} = {h.scale:.3g})</span></div><div>")
        for tok, raw, sc in zip(h.tokens, h.raw, h.scaled):
            shown = html.escape(tok.replace("\n", NEWLINE_MARK)).replace(" ", "&nbsp;")
            tip = f"{raw:.3f} ({sc:+.2f})" if np.isfinite(sc) else f"{raw:.3f} (skipped)"
            out.append(f'<span title="{tip}" style="background:{_hex(_rgb(sc))}">{shown}</span>')
            if "\n" in tok:
                out.append("<br>")
        out.append("</div>")
    out.append("</div>")
    return "".join(out)


def _layout(tokens: Sequence[str], width_chars: int) -> list[tuple[int, int, str, int]]:
    """Place tokens on a character grid: ``(line, column, text, token index)``; wraps at
    ``width_chars`` and after tokens holding a line break."""
    placed = []
    line, col = 0, 0
    for i, tok in enumerate(tokens):
        breaks = "\n" in tok
        text = tok.replace("\n", NEWLINE_MARK)
        if col > 0 and col + len(text) > width_chars:
            line, col = line + 1, 0
        placed.append((line, col, text, i))
        col += max(len(text), 1)
        if breaks:
            line, col = line + 1, 0
    return placed


def heatmap_figure(heats: TokenHeat | Sequence[TokenHeat], width_chars: int = 100, fontsize: float = 9.0):
    """A matplotlib figure drawing each :class:`TokenHeat` as coloured monospace text."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if isinstance(heats, TokenHeat):
        heats = [heats]
    blocks = [_layout(h.tokens, width_chars) for h in heats]
    n_lines = sum((b[-1][0] + 1 if b else 1) + 2 for b in blocks)
    char_in = fontsize * 0.6021 / 72  # DejaVu Sans Mono advance width, in inches
    line_in = fontsize * 1.65 / 72
    fig = plt.figure(figsize=(width_chars * char_in + 0.4, n_lines * line_in + 0.5))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
    ax.set_xlim(0, width_chars)
    ax.set_ylim(n_lines, 0)
    ax.axis("off")
    y = 0
    for h, placed in zip(heats, blocks):
        head = h.title + (f"  [probe: {h.probe}; scale p{h.q:g} |value| = {h.scale:.3g}]" if h.probe else "")
        ax.text(0, y + 0.5, head, va="center", ha="left", family="DejaVu Sans Mono", fontsize=fontsize, parse_math=False,
                fontweight="bold")
        y += 1
        for line, col, text, i in placed:
            ax.add_patch(Rectangle((col, y + line + 0.05), max(len(text), 1), 0.9, color=_rgb(h.scaled[i]), lw=0))
            ax.text(col, y + line + 0.5, text, va="center", ha="left", family="DejaVu Sans Mono", fontsize=fontsize,
                    parse_math=False)
        y += (placed[-1][0] + 1 if placed else 1) + 1
    return fig
