"""Check 2: how each probe moves token by token over stories of its own emotion.

The paper's appendix (Figs. 40-51) shows each vector's activation on its stories: it peaks on the
emotion-relevant phrases rather than sitting flat over the whole text, which argues the vector
is not a story-style or topic confound. We compute per-token projections of every probe on a few
stories (ideally held out from the vectors' training corpus), and summarise each story by where
its own emotion ranks among the probes, averaged over the tokens from ``start`` on (the pooling
window of extraction).

Projections (not cosines) are used for the heatmap because the paper's token pictures show
activation values scaled per transcript (:mod:`emolib.monitor.heatmap`); the first token (attention sink,
norm far above the rest) is left out of the scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emolib.monitor.heatmap import TokenHeat, display_tokens, token_heat
from emolib.study.readout import layer_of, probe_projections, residual_at
from emolib.vectors import EmotionVectors


@dataclass
class StoryTokens:
    """Per-token probe values for some stories: ``values[i]`` is ``[tokens_i, emotions]``."""

    ids: list[str]
    labels: list[str]
    tokens: list[list[str]]
    values: list[np.ndarray]
    emotions: list[str]
    layer: int

    def heat(self, i: int, probe: str | None = None, q: float = 99.0) -> TokenHeat:
        """The :class:`~emolib.monitor.heatmap.TokenHeat` of story ``i`` drawn for ``probe`` (default: its label)."""
        probe = probe or self.labels[i]
        return token_heat(self.tokens[i], self.values[i], title=f"{self.ids[i]} (story: {self.labels[i]})",
                          probe=probe, probes=self.emotions, q=q, skip=[0])


def story_token_values(model, tokenizer, vectors: EmotionVectors, texts: Sequence[str], labels: Sequence[str],
                       ids: Sequence[str] | None = None, layer: int | None = None, max_tokens: int = 256,
                       batch_size: int = 8) -> StoryTokens:
    """Per-token projections of every probe on each story (raw text, as in extraction)."""
    layer = layer_of(vectors, layer)
    seqs = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in texts]
    acts = residual_at(model, tokenizer, seqs, [list(range(len(s))) for s in seqs], [layer], batch_size=batch_size)
    values = [probe_projections(vectors, a[:, 0], layer).numpy() for a in acts]
    return StoryTokens(ids=list(ids) if ids is not None else [str(i) for i in range(len(texts))], labels=list(labels),
                       tokens=[display_tokens(tokenizer, s) for s in seqs], values=values,
                       emotions=list(vectors.emotions), layer=layer)


def story_token_table(st: StoryTokens, q: float = 99.0) -> pd.DataFrame:
    """Tidy long table: ``story_id, label, position, token, probe, value, scaled``.

    ``scaled`` is the value divided by the story's 99th-percentile absolute value over all probes
    (position 0 excluded), clipped to [-1, 1]: the heatmap's colour.
    """
    from emolib.monitor.heatmap import percentile_scale

    frames = []
    for sid, lab, toks, v in zip(st.ids, st.labels, st.tokens, st.values):
        s = percentile_scale(v[1:], q) if len(v) > 1 else percentile_scale(v, q)
        n, k = v.shape
        frames.append(pd.DataFrame({
            "story_id": sid, "label": lab, "position": np.repeat(np.arange(n), k), "token": np.repeat(toks, k),
            "probe": np.tile(st.emotions, n), "value": v.ravel(), "scaled": np.clip(v.ravel() / s, -1, 1)}))
    return pd.concat(frames, ignore_index=True)


def own_probe_ranks(st: StoryTokens, start: int = 50) -> pd.DataFrame:
    """Per story: rank (1 = highest) of its own emotion's mean projection over tokens ``>= start``
    among all probes, its mean, the other probes' mean, and the own probe's per-token spread.

    Shorter stories use all tokens but the first. Chance rank is ``(n_emotions + 1) / 2``.
    Projections are compared after z-scoring each probe over all the stories' tokens, so a probe
    with a large constant offset cannot win everywhere.
    """
    allv = np.concatenate([v[1:] for v in st.values])
    mu, sd = allv.mean(axis=0), allv.std(axis=0) + 1e-12
    rows = []
    for sid, lab, v in zip(st.ids, st.labels, st.values):
        window = v[start:] if len(v) > start + 1 else v[1:]
        z = (window - mu) / sd
        mean = z.mean(axis=0)
        j = st.emotions.index(lab)
        rank = int(1 + (mean > mean[j]).sum())
        own = window[:, j]
        rows.append({"story_id": sid, "label": lab, "own_rank": rank, "n_probes": len(st.emotions),
                     "own_mean_z": float(mean[j]), "others_mean_z": float(np.delete(mean, j).mean()),
                     "own_token_std": float(own.std()), "own_peak_position": int(np.argmax(v[1:, j]) + 1)})
    return pd.DataFrame(rows)


def pick_stories(records: Sequence[dict], emotions: Sequence[str], per_emotion: int = 1,
                 exclude_ids: Sequence[str] = (), prefer_ids: Sequence[str] = ()) -> list[dict]:
    """Choose stories to show: ``prefer_ids`` first (e.g. the vectors' held-out list), then the last
    ``per_emotion`` stories of each emotion not in ``exclude_ids`` (deterministic)."""
    prefer = set(prefer_ids)
    skip = set(exclude_ids)
    out = []
    for e in emotions:
        mine = [r for r in records if r.get("emotion") == e and r.get("kind", "story") == "story"]
        chosen = [r for r in mine if r["id"] in prefer][:per_emotion]
        rest = [r for r in reversed(mine) if r["id"] not in skip and r not in chosen]
        chosen += rest[: per_emotion - len(chosen)]
        out.extend(chosen)
    return out

