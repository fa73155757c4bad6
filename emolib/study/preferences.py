"""Preferences: which activities does the model choose, do emotion probes predict it, and does
steering an emotion onto an activity change how much it is chosen?

The paper's preference experiment, rebuilt on our own 64 activities
(``emolib/data/activities.json``, 8 categories x 8):

1. *Choices.* "Would you prefer to (A) ... or (B) ...?" with the assistant reply prefilled to
   "(" and the A/B next-token logits compared (:mod:`emolib.study.scoring`), in both orders.
2. *Elo.* A Bradley-Terry model with a position-bias term is fitted to the soft outcomes
   (P(first option)); scores are shown on the Elo scale (400 points = 10:1 odds). The bias term
   matters on small models, whose A/B logits lean heavily towards "A".
3. *Probe side.* Each emotion's mean projection over the activity's tokens in "How would you feel
   if you were asked to ...?" is correlated with Elo across activities (paper: blissful r=0.71,
   hostile r=-0.74).
4. *Steering.* Half the activities (4 per category) are steered: the vector is added only on
   those activities' tokens wherever they appear in a pair prompt; pairs are re-scored, Elo refitted
   (anchored on the unsteered half, whose mutual outcomes cannot change) and the steered half's
   mean Elo change (Delta-Elo) compared with the emotion's probe-Elo correlation across emotions
   (paper: r=0.85). Random directions of the same norm give the null band for Delta-Elo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch

from emolib.capture import pad_id_of, pad_left, record_residual
from emolib.chat import ChatPrompt, build_prompt
from emolib.steering import Steering
from emolib.study.controls import RandomSpread, random_directions, random_labels
from emolib.study.scoring import hidden_states, last_token_logits, option_logprobs, option_probs, option_readout

PAIR_TEMPLATE = "Would you prefer to (A) {a} or (B) {b}?"
FEEL_TEMPLATE = "How would you feel if you were asked to {activity}?"
ELO_SCALE = 400.0 / math.log(10.0)
ELO_MEAN = 1500.0


def load_activities() -> list[dict[str, str]]:
    """The 64 activities (package data): dicts with ``id``, ``category``, ``text``."""
    doc = json.loads(resources.files("emolib.data").joinpath("activities.json").read_text(encoding="utf-8"))
    return list(doc["activities"])


# ---- pair design and prompts -----------------------------------------------------------------------


def pair_design(n: int, opponents: int | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """Unordered pairs ``(i, j)``, ``i < j``: all of them if ``opponents`` is None, <= 0 or >= n-1, else a
    random design in which every item meets about ``opponents`` others (rounds of random perfect
    matchings, duplicates dropped), so every item is compared the same number of times."""
    if n < 2:
        raise ValueError("Need at least two items.")
    if opponents is None or opponents <= 0 or opponents >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = np.random.default_rng(seed)
    pairs: set[tuple[int, int]] = set()
    for _ in range(int(opponents)):
        perm = rng.permutation(n)
        for a, b in zip(perm[0::2], perm[1::2]):
            pairs.add((int(min(a, b)), int(max(a, b))))
    return sorted(pairs)


def split_half(categories: Sequence[str], seed: int = 0) -> list[int]:
    """Indices of the steered half: half of each category, at random (seeded)."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for cat in sorted(set(categories)):
        idx = [i for i, c in enumerate(categories) if c == cat]
        out.extend(int(i) for i in rng.permutation(idx)[: len(idx) // 2])
    return sorted(out)


@dataclass
class PairItem:
    """One ordered pair: activity ``first`` shown as (A), ``second`` as (B)."""

    first: int
    second: int
    prompt: ChatPrompt
    token_ids: tuple[int, int]


def pair_items(tokenizer, texts: Sequence[str], pairs: Sequence[tuple[int, int]], both_orders: bool = True,
               system: str | None = None) -> list[PairItem]:
    """Prompts for each pair (and its reverse), with the token spans of both activities."""
    items = []
    ordered = [(i, j) for i, j in pairs] + ([(j, i) for i, j in pairs] if both_orders else [])
    for i, j in ordered:
        user = PAIR_TEMPLATE.format(a=texts[i], b=texts[j])
        a_at = user.index("(A) ") + 4
        b_at = a_at + len(texts[i]) + user[a_at + len(texts[i]):].index("(B) ") + 4
        ro = option_readout(tokenizer, user, system=system)
        prompt = build_prompt(tokenizer, user, ro.prefill, system,
                              mark_spans={"A": (a_at, a_at + len(texts[i])), "B": (b_at, b_at + len(texts[j]))})
        items.append(PairItem(i, j, prompt, (ro.token_ids[0], ro.token_ids[1])))
    return items


def score_pairs(model, tokenizer, items: Sequence[PairItem], steering: Steering | None = None,
                steered: Sequence[int] = (), batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(P(first option), probability mass on the two letters)`` per item.

    With ``steered`` activities, the steering is added on each of their tokens where they appear
    (one span per steered activity in the prompt). Rows are batched by those spans whether or not a
    steering is given, so a baseline scored with the same ``steered`` set has identical batches.
    """
    s = set(int(x) for x in steered)

    def scopes(r: int) -> tuple:
        it = items[r]
        return tuple(it.prompt.spans[slot] for slot, act in (("A", it.first), ("B", it.second)) if act in s)

    logits = last_token_logits(model, tokenizer, [it.prompt.ids for it in items], steering, scopes, batch_size)
    probs, mass = option_probs(option_logprobs(logits, [it.token_ids for it in items]))
    return probs[:, 0].numpy().astype(float), mass.numpy().astype(float)


# ---- Bradley-Terry / Elo ---------------------------------------------------------------------------


@dataclass
class BTFit:
    """Bradley-Terry scores (natural-log odds units, mean 0), the position bias, and Elo."""

    scores: np.ndarray
    bias: float
    n_obs: int
    converged: bool

    @property
    def elo(self) -> np.ndarray:
        return ELO_MEAN + ELO_SCALE * self.scores


def fit_bradley_terry(first: Sequence[int], second: Sequence[int], p_first: Sequence[float], n_items: int,
                      position_bias: bool = True, l2: float = 1e-3) -> BTFit:
    """Fit ``P(first chosen) = sigmoid(s_first - s_second + bias)`` to soft (or 0/1) outcomes.

    Maximum likelihood with a small ridge on the scores (it fixes the otherwise free offset and
    keeps items that always win finite); the scores are returned centred. ``position_bias`` fits the
    order effect jointly (use both orders of each pair so it is identifiable).
    """
    from scipy.optimize import minimize

    f = np.asarray(first, dtype=int)
    g = np.asarray(second, dtype=int)
    p = np.clip(np.asarray(p_first, dtype=float), 0.0, 1.0)
    if not (f.shape == g.shape == p.shape):
        raise ValueError("first, second and p_first must have the same length.")
    nb = 1 if position_bias else 0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Negative log-likelihood of the soft outcomes (plus the ridge) and its gradient."""
        s = theta[:n_items]
        b = theta[n_items] if nb else 0.0
        ### BEGIN SOLUTION
        z = s[f] - s[g] + b
        # -[p log sig(z) + (1-p) log sig(-z)] = softplus(z) - p z
        val = np.logaddexp(0.0, z) - p * z
        d = 1.0 / (1.0 + np.exp(-z)) - p
        grad = np.zeros_like(theta)
        np.add.at(grad, f, d)
        np.add.at(grad, g, -d)
        if nb:
            grad[n_items] = d.sum()
        grad[:n_items] += l2 * s
        return float(val.sum() + 0.5 * l2 * (s ** 2).sum()), grad
        ### END SOLUTION

    res = minimize(loss, np.zeros(n_items + nb), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-8})
    s = res.x[:n_items] - res.x[:n_items].mean()
    return BTFit(scores=s, bias=float(res.x[n_items]) if nb else 0.0, n_obs=int(len(p)), converged=bool(res.success))


def hard_outcomes(first: Sequence[int], second: Sequence[int], p_first: Sequence[float]) -> tuple[list, list, list]:
    """The paper's "hard Elo" for models whose A/B logits are nearly tied: average each unordered
    pair over both orders, then count a win for whichever side is above 1/2 (ties give 1/2)."""
    acc: dict[tuple[int, int], list[float]] = {}
    for a, b, p in zip(first, second, p_first):
        key, val = ((a, b), p) if a < b else ((b, a), 1.0 - p)
        acc.setdefault(key, []).append(float(val))
    f, g, out = [], [], []
    for (a, b), vals in sorted(acc.items()):
        m = float(np.mean(vals))
        f.append(a)
        g.append(b)
        out.append(1.0 if m > 0.5 else 0.0 if m < 0.5 else 0.5)
    return f, g, out


# ---- probe side ------------------------------------------------------------------------------------------


def probe_readings(model, tokenizer, vectors, texts: Sequence[str], emotions: Sequence[str],
                   layers: Sequence[int] | int | None = None, system: str | None = None,
                   batch_size: int = 16) -> np.ndarray:
    """``[activities, emotions]``: each emotion's projection (unit vector) on the residual stream,
    averaged over the activity's tokens in "How would you feel if you were asked to ...?" and over
    ``layers``."""
    if layers is None:
        layers = [vectors.default_layer]
    if isinstance(layers, int):
        layers = [layers]
    prompts = [build_prompt(tokenizer, FEEL_TEMPLATE.format(activity=t), "", system, marks={"act": t}) for t in texts]
    sub = vectors.select(list(emotions))
    out = np.zeros((len(texts), len(emotions)))
    pad = pad_id_of(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            ids, mask = pad_left([prompts[i].ids for i in rows], pad)
            with record_residual(model, list(layers)) as rec:
                hidden_states(model, ids, mask)
            width = ids.shape[1]
            for j, i in enumerate(rows):
                off = width - len(prompts[i])
                a, z = prompts[i].spans["act"]
                vals = [sub.project(rec[layer][0][j, off + a:off + z].mean(0), layer).numpy() for layer in layers]
                out[i] = np.mean(vals, axis=0)
    return out


def correlations(readings: np.ndarray, elo: np.ndarray) -> np.ndarray:
    """Pearson r between each column of ``readings`` and ``elo`` (NaN where a column is constant)."""
    x = np.asarray(readings, dtype=float)
    y = np.asarray(elo, dtype=float)
    xc = x - x.mean(0)
    yc = y - y.mean()
    den = np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc[:, None]).sum(0) / den, np.nan)


def spread_pick(names: Sequence[str], values: Sequence[float], k: int) -> list[str]:
    """``k`` names at evenly spaced ranks of ``values`` (both extremes included), so steered
    emotions span the range of probe-Elo correlations, as in the paper's choice of 35."""
    v = np.asarray(values, dtype=float)
    ok = [i for i in np.argsort(v) if np.isfinite(v[i])]
    if k >= len(ok):
        return [names[i] for i in ok]
    pos = np.unique(np.round(np.linspace(0, len(ok) - 1, k)).astype(int))
    return [names[ok[p]] for p in pos]


# ---- the whole experiment --------------------------------------------------------------------------------


@dataclass
class PreferenceResult:
    """Everything the preference figures and metrics need (JSON-ready through :meth:`to_dict`)."""

    activities: list[str]
    categories: list[str]
    pairs: list[tuple[int, int]]
    p_first: list[float]
    letter_mass: list[float]
    elo: list[float]
    bias: float
    emotions: list[str]
    readings: list[list[float]]
    corr: list[float]
    steered: list[int]
    strength: float
    layers: list[int]
    steer_rows: list[dict[str, Any]] = field(default_factory=list)
    random_rows: list[dict[str, Any]] = field(default_factory=list)
    r_delta_vs_corr: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)

    def category_elo(self) -> dict[str, float]:
        e = np.asarray(self.elo)
        return {c: float(e[[i for i, x in enumerate(self.categories) if x == c]].mean())
                for c in dict.fromkeys(self.categories)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["category_elo"] = self.category_elo()
        return d


def elo_under_steering(model, tokenizer, items: Sequence[PairItem], base_p: np.ndarray, steering: Steering,
                       steered: Sequence[int], n_items: int, base_fit: BTFit, batch_size: int = 16,
                       position_bias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Elo of every activity with ``steering`` on the ``steered`` activities' tokens.

    Only pairs that contain a steered activity are re-scored (the others cannot change: nothing
    is added to their prompts). The fit is anchored so the unsteered half keeps its baseline mean.
    Returns ``(elo, p_first)``.
    """
    s = set(int(x) for x in steered)
    touch = [k for k, it in enumerate(items) if it.first in s or it.second in s]
    p = np.array(base_p, dtype=float)
    if touch:
        p_new, _ = score_pairs(model, tokenizer, [items[k] for k in touch], steering, steered, batch_size)
        p[touch] = p_new
    fit = fit_bradley_terry([it.first for it in items], [it.second for it in items], p, n_items, position_bias)
    elo = fit.elo
    control = [i for i in range(n_items) if i not in s]
    if control:
        elo = elo - elo[control].mean() + base_fit.elo[control].mean()
    return elo, p


def run_preferences(model, tokenizer, vectors, emotions_probe: Sequence[str], n_steer: int = 4,
                    strength: float = 0.5, layers: Sequence[int] | int | None = None, opponents: int | None = 8,
                    n_random: int = 1, seed: int = 0, activities: Sequence[dict] | None = None,
                    steer_emotions: Sequence[str] | None = None, system: str | None = None,
                    batch_size: int = 16, position_bias: bool = True, progress=None) -> PreferenceResult:
    """The whole preference experiment.

    ``opponents=None`` (or 0, for TOML profiles, which have no null) scores every pair: the paper's
    4,032 ordered pairs for 64 activities. ``steer_emotions`` defaults to ``n_steer`` emotions spread
    over the range of probe-Elo correlations."""
    import time

    acts = list(activities) if activities is not None else load_activities()
    texts = [a["text"] for a in acts]
    cats = [a["category"] for a in acts]
    n = len(texts)
    if layers is None:
        layers = [vectors.default_layer]
    layers = [int(x) for x in np.atleast_1d(layers)]
    t0 = time.perf_counter()
    pairs = pair_design(n, opponents, seed)
    items = pair_items(tokenizer, texts, pairs, True, system)
    steered = split_half(cats, seed)
    base_p, mass = score_pairs(model, tokenizer, items, None, steered, batch_size)
    fit = fit_bradley_terry([it.first for it in items], [it.second for it in items], base_p, n, position_bias)
    t1 = time.perf_counter()
    readings = probe_readings(model, tokenizer, vectors, texts, emotions_probe, layers, system, batch_size)
    corr = correlations(readings, fit.elo)
    t2 = time.perf_counter()
    chosen = list(steer_emotions) if steer_emotions is not None else spread_pick(list(emotions_probe), corr, n_steer)
    res = PreferenceResult(activities=texts, categories=cats, pairs=[tuple(p) for p in pairs], p_first=base_p.tolist(),
                           letter_mass=mass.tolist(), elo=fit.elo.tolist(), bias=fit.bias, emotions=list(emotions_probe),
                           readings=readings.tolist(), corr=corr.tolist(), steered=steered, strength=float(strength),
                           layers=layers)
    ctrl = [i for i in range(n) if i not in set(steered)]
    for name in chosen:
        st = vectors.steering(name, strength, layers=layers)
        elo, _ = elo_under_steering(model, tokenizer, items, base_p, st, steered, n, fit, batch_size, position_bias)
        d = elo - fit.elo
        res.steer_rows.append({"emotion": name, "corr": float(corr[list(emotions_probe).index(name)])
                               if name in emotions_probe else float("nan"),
                               "delta_elo_steered": float(d[steered].mean()), "delta_elo_control": float(d[ctrl].mean()),
                               "delta_elo": d.tolist()})
        if progress:
            progress(name)
    for r, name in zip(random_directions(vectors.width, n_random, seed + 1), random_labels(n_random)):
        st = vectors.steering(r, strength, layers=layers, label=name)
        elo, _ = elo_under_steering(model, tokenizer, items, base_p, st, steered, n, fit, batch_size, position_bias)
        d = elo - fit.elo
        res.random_rows.append({"direction": name, "delta_elo_steered": float(d[steered].mean()),
                                "delta_elo_control": float(d[ctrl].mean())})
    t3 = time.perf_counter()
    xs = [r["corr"] for r in res.steer_rows]
    ys = [r["delta_elo_steered"] for r in res.steer_rows]
    if len(xs) >= 3 and np.std(xs) > 0 and np.std(ys) > 0:
        res.r_delta_vs_corr = float(np.corrcoef(xs, ys)[0, 1])
    res.seconds = {"pairs": t1 - t0, "probe": t2 - t1, "steering": t3 - t2}
    return res


def random_band(res: PreferenceResult) -> RandomSpread:
    """Spread of the steered half's Delta-Elo under random directions."""
    return RandomSpread.of([r["delta_elo_steered"] for r in res.random_rows])


def plot_preferences(res: PreferenceResult):
    """Three panels: Elo by category; probe-Elo correlation per emotion; Delta-Elo vs correlation."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    cats = list(dict.fromkeys(res.categories))
    df = pd.DataFrame({"category": res.categories, "elo": np.asarray(res.elo)})
    # Elo bars: the category mean with a bootstrap 95 % interval, and every activity as a dot
    sns.barplot(data=df, x="category", y="elo", order=cats, errorbar=("ci", 95), seed=0, ax=axes[0],
                color="0.85", edgecolor="0.4")
    sns.stripplot(data=df, x="category", y="elo", order=cats, ax=axes[0], size=4, jitter=0.15, hue="category",
                  legend=False)
    axes[0].set_xticks(range(len(cats)), cats, rotation=40, ha="right", fontsize=8)
    axes[0].set_xlabel("")
    axes[0].set_ylabel("Elo (Bradley-Terry, bias-corrected)")
    axes[0].set_title(f"Activity Elo; position bias {res.bias:+.2f} logits toward (A)", fontsize=9)
    corr = np.asarray(res.corr, dtype=float)
    order = np.argsort(np.nan_to_num(corr))
    axes[1].barh(range(len(order)), corr[order], color=["tab:red" if v < 0 else "tab:blue" for v in corr[order]])
    axes[1].set_yticks(range(len(order)), [res.emotions[i] for i in order], fontsize=7)
    axes[1].set_xlabel("r(probe reading, Elo) across activities")
    axes[1].set_title("Probe-Elo correlation", fontsize=9)
    xs = [r["corr"] for r in res.steer_rows]
    ys = [r["delta_elo_steered"] for r in res.steer_rows]
    axes[2].scatter(xs, ys)
    for r in res.steer_rows:
        axes[2].annotate(r["emotion"], (r["corr"], r["delta_elo_steered"]), fontsize=7)
    band = random_band(res)
    if band.n:
        axes[2].axhspan(band.lo, band.hi, color="0.8", alpha=0.6, label=f"random directions (n={band.n})")
        axes[2].legend(fontsize=7)
    axes[2].axhline(0, color="k", lw=0.6)
    axes[2].set_xlabel("probe-Elo correlation")
    axes[2].set_ylabel("mean Delta-Elo of steered activities")
    axes[2].set_title(f"Steering at {res.strength:.2f} x norm: r = {res.r_delta_vs_corr:.2f}", fontsize=9)
    fig.tight_layout()
    return fig
