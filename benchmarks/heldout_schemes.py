"""Held-out top-1/top-5 of a finished run's reference vectors under several fold schemes.

Why: corpus v2's headline test (02) holds out topics *and* voices, so its accuracy is not comparable
one-to-one with corpus v1's, which held out topics within one voice. This script sets the schemes side
by side on the same pooled stories and neutral PCA, at the run's default layer, from what 02 cached
(no model is loaded; seconds).

Usage: .venv/bin/python benchmarks/heldout_schemes.py [runs/default]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from emolib.study import reliability as rel
from emolib.study.extraction import load_pooled_stories
from emolib.study.layer_sweep import grid_folds
from emolib.vectors import EmotionVectors, NeutralPCA


def main(run: Path) -> None:
    vec = EmotionVectors.load(run / "vectors.safetensors")
    st = load_pooled_stories(run, vec)
    pca = NeutralPCA.load(run / "neutral_pca.safetensors")
    thr = (vec.meta.get("denoise") or {}).get("threshold")
    L = vec.default_layer
    x = rel.denoised_at(st.x, list(vec.layers).index(L), pca, L, thr)
    labels, topics = st.labels, st.topics
    voices = np.array(st.voices)
    schemes = {
        "topic-disjoint (5 groups), every voice": grid_folds(topics, ["-"] * len(topics), 5, 1, 0),
        "leave one voice out": [(np.flatnonzero(voices != v), np.flatnonzero(voices == v)) for v in sorted(set(voices))],
        "topic- and voice-disjoint (02's headline)": grid_folds(topics, list(voices), 5, 3, 0),
    }
    n_em = len(set(labels))
    print(f"{run}: block {L}, {len(labels)} stories, {n_em} emotions (chance top-1 {1 / n_em:.3f})")
    for name, folds in schemes.items():
        h = rel.heldout(x, labels, folds)
        per = np.mean([len(tr) for tr, _ in folds]) / n_em
        print(f"  {name:45s} top-1 {h.top1:.3f}  top-5 {h.top5:.3f}  (~{per:.0f} training stories per emotion)")
    for v in sorted(set(voices)):
        rows = np.flatnonzero(voices == v)
        folds = grid_folds([topics[i] for i in rows], ["-"] * len(rows), 5, 1, 0)
        h = rel.heldout(x[rows], [labels[i] for i in rows], folds)
        print(f"  within voice {v:12s} topic-disjoint: top-1 {h.top1:.3f}  top-5 {h.top5:.3f}  ({len(rows)} stories)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default"))
