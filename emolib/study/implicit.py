"""Checks 3 and 6: implicit scenarios read at the assistant-header token, and the same per layer.

The paper (Table 2, Fig. 2) writes 12 one-line user messages that each imply one of the working
emotions without naming it, reads the cosine of every probe at the "Assistant colon" and gets a
strong diagonal. Ours are in ``emolib/data/validation_prompts.json`` (own wording).

Scoring (our choice, stated because the paper shows only the matrix):

* ``matrix[scenario, probe]`` = cosine at the assistant-header token (:mod:`.probe_readout`);
* **standardised** (headline): each probe's column is z-scored over the scenarios before
  comparing probes within a row. A probe that is high for *every* prompt (the paper saw "loving"
  light up at every colon as the Assistant prepares a caring reply) then cannot win every row;
  this is the per-probe standardisation argmaxes across emotions need;
* **raw**: the same on the raw cosines (reported too; it is stricter when offsets dominate);
* diagonal wins = scenarios whose intended emotion ranks first among the probes; mean rank of the
  intended emotion (1 = best; chance ``(k + 1) / 2``); also "column wins": probes whose highest
  scenario is their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from emolib.chat import format_user_turn
from emolib.study.readout import layer_of, probe_cosines, residual_at
from emolib.vectors import EmotionVectors


def header_activations(model, tokenizer, texts: Sequence[str], layers: Sequence[int], which: str = "header",
                       system: str | None = None, batch_size: int = 16) -> torch.Tensor:
    """Block outputs ``[n, layers, width]`` at the assistant-header token (``which="header"``) or the
    user's last token (``"user_last"``) of each user message."""
    fps = [format_user_turn(tokenizer, t, system=system) for t in texts]
    pos = [[fp.header_index if which == "header" else fp.user_last_index] for fp in fps]
    acts = residual_at(model, tokenizer, [fp.ids for fp in fps], pos, layers, batch_size=batch_size)
    return torch.stack([a[0] for a in acts])


def standardise_columns(m: np.ndarray) -> np.ndarray:
    """z-score each column (probe) over the rows (prompts)."""
    m = np.asarray(m, dtype=np.float64)
    return (m - m.mean(axis=0)) / (m.std(axis=0) + 1e-12)


def diagonal_scores(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> dict[str, float]:
    """Diagonal wins, mean rank of the intended probe per row, and column wins.

    ``rows[i]`` is the intended emotion of row ``i`` (must be in ``cols``).
    """
    m = np.asarray(matrix, dtype=np.float64)
    cols = list(cols)
    j = np.array([cols.index(r) for r in rows])
    own = m[np.arange(len(rows)), j]
    ranks = 1 + (m > own[:, None]).sum(axis=1)
    col_best = m[:, j].argmax(axis=0)  # for each intended probe, the row where it is highest
    return {"diagonal_wins": int((ranks == 1).sum()), "mean_rank": float(ranks.mean()),
            "column_wins": int((col_best == np.arange(len(rows))).sum()), "n": len(rows),
            "chance_mean_rank": (len(cols) + 1) / 2}


def scenario_matrix(model, tokenizer, vectors: EmotionVectors, scenarios: Sequence[dict],
                    probes: Sequence[str] | None = None, layer: int | None = None) -> pd.DataFrame:
    """Tidy table of the implicit-scenario read-out at one layer.

    Columns: ``scenario (intended emotion), text, probe, cosine, z (column-standardised), layer``.
    ``probes`` default to the scenarios' emotions, in order.
    """
    layer = layer_of(vectors, layer)
    intended = [s["emotion"] for s in scenarios]
    probes = list(probes) if probes is not None else intended
    sub = vectors.select(probes)
    acts = header_activations(model, tokenizer, [s["text"] for s in scenarios], [layer])
    cos = probe_cosines(sub, acts[:, 0], layer).numpy()
    return _tidy(cos, scenarios, probes, layer)


def _tidy(cos: np.ndarray, scenarios: Sequence[dict], probes: Sequence[str], layer: int) -> pd.DataFrame:
    z = standardise_columns(cos)
    rows = []
    for i, s in enumerate(scenarios):
        for k, p in enumerate(probes):
            rows.append({"scenario": s["emotion"], "text": s["text"], "probe": p, "cosine": float(cos[i, k]),
                         "z": float(z[i, k]), "layer": layer})
    return pd.DataFrame(rows)


def pivot(df: pd.DataFrame, value: str = "cosine") -> pd.DataFrame:
    """``scenario x probe`` matrix in the table's order."""
    rows = list(dict.fromkeys(df["scenario"]))
    cols = list(dict.fromkeys(df["probe"]))
    return df.pivot(index="scenario", columns="probe", values=value).loc[rows, cols]


def scenario_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Diagonal wins and mean rank, standardised and raw, for each layer in ``df``: tidy rows."""
    out = []
    for layer, sub in df.groupby("layer", sort=True):
        for kind, value in (("standardised", "z"), ("raw", "cosine")):
            m = pivot(sub, value)
            sc = diagonal_scores(m.to_numpy(), list(m.index), list(m.columns))
            out.append({"layer": int(layer), "scoring": kind, **sc})
    return pd.DataFrame(out)


def scenario_layers(model, tokenizer, vectors: EmotionVectors, scenarios: Sequence[dict],
                    probes: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Check 6: the scenario read-out at every layer of the vectors (one forward pass).

    Returns the tidy matrix rows for all layers; summarise with :func:`scenario_scores`.
    """
    layers = list(layers) if layers is not None else list(vectors.layers)
    intended = [s["emotion"] for s in scenarios]
    probes = list(probes) if probes is not None else intended
    sub = vectors.select(probes)
    acts = header_activations(model, tokenizer, [s["text"] for s in scenarios], layers)
    frames = []
    for li, layer in enumerate(layers):
        cos = probe_cosines(sub, acts[:, li], layer).numpy()
        frames.append(_tidy(cos, scenarios, probes, layer))
    return pd.concat(frames, ignore_index=True)
