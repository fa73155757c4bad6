"""The paper's emotion words and the named subsets the notebooks use.

Provenance: ``data/emotions_171.json`` is the list of 171 emotion words from the appendix of
Sofroniew et al. (2026), "Emotion Concepts and their Function in a Large Language Model", in the
paper's (alphabetical) order; ``data/clusters_k10.json`` is the paper's Table 12 (k-means, k=10);
``data/post_training_diffs_171.json`` its Table 16. These are facts and figures from the paper.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources

WORKING_12 = ("happy", "inspired", "loving", "proud", "calm", "desperate",
              "angry", "guilty", "sad", "afraid", "nervous", "surprised")
PREFERENCE_EXTRA = ("blissful", "hostile")
POST_TRAINING_EXTRA = ("brooding", "gloomy", "reflective", "playful", "exuberant", "spiteful")


def _load(name: str) -> dict:
    return json.loads(resources.files("emolib.data").joinpath(name).read_text(encoding="utf-8"))


@cache
def all_emotions() -> tuple[str, ...]:
    """The 171 emotion words in the paper's order."""
    return tuple(_load("emotions_171.json")["emotions"])


@cache
def paper_clusters() -> dict[str, list[str]]:
    """The paper's k=10 clusters (Table 12), name -> member words."""
    return _load("clusters_k10.json")["clusters"]


@cache
def topics() -> tuple[str, ...]:
    """Our 100 everyday, emotionally ambiguous story topics (our own wording)."""
    return tuple(_load("topics.json")["topics"])


SUBSETS = {
    "all": lambda: list(all_emotions()),
    "working12": lambda: list(WORKING_12),
    "preference": lambda: list(WORKING_12) + list(PREFERENCE_EXTRA),
}


def emotion_subset(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Resolve a subset name (``all``, ``working12``, ``preference``, ``first:N``, ``every:K``) or a list of words."""
    if isinstance(spec, str):
        if spec in SUBSETS:
            return SUBSETS[spec]()
        if spec.startswith("first:"):
            return list(all_emotions()[: int(spec.split(":", 1)[1])])
        if spec.startswith("every:"):  # every k-th of the 171: a spread-out subset for costly side checks
            k = int(spec.split(":", 1)[1])
            if k < 1:
                raise ValueError(f"every:K needs K >= 1, got {spec!r}")
            return list(all_emotions()[::k])
        spec = [w.strip() for w in spec.split(",") if w.strip()]
    words = list(spec)
    check_emotions(words)
    return words


def check_emotions(words) -> None:
    """Raise a KeyError naming close matches for any word that is not one of the 171."""
    known = set(all_emotions())
    for w in words:
        if w not in known:
            close = difflib.get_close_matches(w, list(known), n=5, cutoff=0.6)
            raise KeyError(f"{w!r} is not one of the paper's 171 emotions." + (f" Close: {', '.join(close)}." if close else ""))
