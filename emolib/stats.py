"""Small, seeded statistics helpers shared by the evaluation notebooks.

Why a module of its own: several stages report a correlation between a model-derived number and
an external one (a principal component and human valence, a probe and an Elo score). Each such
number should come with the same three companions, computed the same way everywhere:

* ``n``, the number of pairs actually used (rows with a missing value are dropped, never imputed);
* a **bootstrap confidence interval** (percentile method, pairs resampled with replacement), so a
  reader sees how much the r would move with a different sample of words;
* a **permutation p-value** (one side shuffled, two-sided, with the ``(hits + 1) / (n_perm + 1)``
  correction so p is never exactly 0), which makes no normality assumption.

With fewer than 3 pairs a correlation is not computable (2 points always give r = +-1); the
result then says so in ``note`` and carries NaN, rather than raising, so a smoke run on 4 emotions
goes through and prints "not computable".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_PAIRS = 3


@dataclass
class Correlation:
    """A correlation with its uncertainty: ``r`` and ``[ci_low, ci_high]`` at ``level``."""

    r: float
    ci_low: float
    ci_high: float
    p_perm: float
    n: int
    method: str = "pearson"
    level: float = 0.95
    n_boot: int = 0
    n_perm: int = 0
    note: str = ""

    @property
    def computable(self) -> bool:
        return math.isfinite(self.r)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        """Compact form for figure titles: ``r = 0.42 [0.30, 0.55], p = 0.001, n = 150``."""
        if not self.computable:
            return f"r not computable (n = {self.n})"
        out = f"r = {self.r:.2f}"
        if math.isfinite(self.ci_low):
            out += f" [{self.ci_low:.2f}, {self.ci_high:.2f}]"
        if math.isfinite(self.p_perm):
            out += f", p = {self.p_perm:.2g}"
        return out + f", n = {self.n}"

    def __str__(self) -> str:
        if not self.computable:
            return f"{self.method} r not computable (n={self.n}: {self.note})"
        parts = [f"{self.method} r = {self.r:.2f}"]
        if math.isfinite(self.ci_low):
            parts[0] += f" [{self.ci_low:.2f}, {self.ci_high:.2f}] ({self.level:.0%} bootstrap CI)"
        if math.isfinite(self.p_perm):
            parts.append(f"permutation p = {self.p_perm:.3g}")
        parts.append(f"n = {self.n}")
        return ", ".join(parts)


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x [..., n]`` and ``y [..., n]`` (NaN where a row is constant)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    num = (xc * yc).sum(axis=-1)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def paired(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float64 arrays with every pair holding a NaN/None dropped."""
    a = np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)
    b = np.asarray([np.nan if v is None else v for v in y], dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def correlation(x: Sequence[float], y: Sequence[float], method: str = "pearson", n_boot: int = 2000,
                n_perm: int = 2000, level: float = 0.95, seed: int = 0) -> Correlation:
    """Correlation of ``x`` and ``y`` with a bootstrap CI and a two-sided permutation p-value.

    ``method`` is ``"pearson"`` or ``"spearman"`` (Pearson on ranks; the ranks are recomputed
    inside every bootstrap sample). Pairs with a missing value are dropped first. Bootstrap
    samples in which one side is constant (possible with few points) are left out of the
    interval. ``seed`` makes both the bootstrap and the permutations reproducible.
    """
    if method not in {"pearson", "spearman"}:
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = paired(x, y)
    n = int(a.size)
    if n < MIN_PAIRS:
        return Correlation(math.nan, math.nan, math.nan, math.nan, n, method, level, 0, 0,
                           note=f"fewer than {MIN_PAIRS} pairs")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return Correlation(math.nan, math.nan, math.nan, math.nan, n, method, level, 0, 0,
                           note="one side is constant")
    prep = _rank if method == "spearman" else (lambda v: v)
    r = float(_pearson_rows(prep(a), prep(b)))
    rng = np.random.default_rng(seed)

    lo = hi = math.nan
    if n_boot > 0:
        idx = rng.integers(0, n, size=(n_boot, n))
        boots = _pearson_rows(prep(a[idx]), prep(b[idx]))
        boots = boots[np.isfinite(boots)]
        if boots.size:
            alpha = (1 - level) / 2
            lo, hi = (float(v) for v in np.quantile(boots, [alpha, 1 - alpha]))
    p = math.nan
    if n_perm > 0:
        perm = np.argsort(rng.random((n_perm, n)), axis=1)
        null = _pearson_rows(np.broadcast_to(prep(a), (n_perm, n)), prep(b)[perm])
        p = float((np.sum(np.abs(null) >= abs(r) - 1e-12) + 1) / (n_perm + 1))
    return Correlation(r, lo, hi, p, n, method, level, n_boot, n_perm)


def pearson(x: Sequence[float], y: Sequence[float], **kw) -> Correlation:
    """:func:`correlation` with ``method="pearson"``."""
    return correlation(x, y, method="pearson", **kw)


def spearman(x: Sequence[float], y: Sequence[float], **kw) -> Correlation:
    """:func:`correlation` with ``method="spearman"``."""
    return correlation(x, y, method="spearman", **kw)


@dataclass
class PermutationBaseline:
    """A statistic against its permutation null: observed value, null mean/sd/95th pct, p-value."""

    observed: float
    null_mean: float
    null_sd: float
    null_q95: float
    p_perm: float
    n_perm: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def permutation_baseline(statistic, labels: Sequence, n_perm: int = 1000, seed: int = 0) -> PermutationBaseline:
    """Compare ``statistic(labels)`` with its values on ``n_perm`` shuffles of ``labels``.

    One-sided (larger is better), e.g. the agreement of a clustering with a reference: the null
    keeps the cluster sizes and breaks the assignment of items to clusters.
    """
    lab = np.asarray(labels)
    obs = float(statistic(lab))
    rng = np.random.default_rng(seed)
    null = np.array([statistic(lab[rng.permutation(lab.size)]) for _ in range(n_perm)], dtype=np.float64)
    p = float((np.sum(null >= obs - 1e-12) + 1) / (n_perm + 1)) if n_perm else math.nan
    return PermutationBaseline(obs, float(null.mean()) if n_perm else math.nan,
                               float(null.std(ddof=1)) if n_perm > 1 else math.nan,
                               float(np.quantile(null, 0.95)) if n_perm else math.nan, p, int(n_perm))
