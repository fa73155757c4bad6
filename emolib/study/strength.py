"""Strength calibration: how hard can a vector push before the model stops being itself?

Steering strengths are fractions of the mean residual norm at the layer (as in the paper),
but the same fraction does very different things on different models (the paper's 0.05-0.5 are
for a very large model; small models need more, and break sooner). So before any behavioural
experiment we sweep strengths and measure *damage* on neutral text, where no emotion should
matter:

* perplexity ratio: ``exp(mean NLL steered - mean NLL unsteered)`` over the text's own tokens;
* mean KL divergence ``KL(p_unsteered || p_steered)`` of the next-token distributions.

The *usable window* is the largest strength whose damage stays under a ceiling (by default a
perplexity ratio of 1.5), found separately for each sign and direction; the model's window is the
smallest over the emotion directions (conservative). Every later experiment states its strengths
as multiples of this window. Random directions of the same norm are swept too, as a reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from emolib.capture import pad_id_of, pad_left
from emolib.steering import Steering, apply_steering
from emolib.study.controls import random_directions, random_labels
from emolib.study.scoring import hidden_states, lm_logits


def usable_strength(strengths: Sequence[float], damage: Sequence[float], ceiling: float,
                    baseline: float = 1.0, interpolate: bool = True) -> float:
    """Largest strength magnitude whose damage, and the damage of every smaller strength, is <= ``ceiling``.

    ``strengths`` are magnitudes (>= 0) in any order; ``damage`` the measured damage at each;
    ``baseline`` the damage at strength 0 (1 for a perplexity ratio, 0 for a KL). With
    ``interpolate`` the answer is the linear crossing point between the last safe and the first
    unsafe grid point; otherwise the last safe grid point. A later dip under the ceiling does not
    extend the window (damage past a break is not trusted). If every point is safe, the largest
    strength swept is returned (the true window is at least that).
    """
    s = np.asarray(strengths, dtype=float)
    d = np.asarray(damage, dtype=float)
    if s.shape != d.shape or s.ndim != 1 or s.size == 0:
        raise ValueError("strengths and damage must be 1-D and of the same, non-zero length.")
    if np.any(s < 0):
        raise ValueError("usable_strength takes magnitudes; call it once per sign.")
    if baseline > ceiling:
        raise ValueError(f"baseline damage {baseline} is already above the ceiling {ceiling}.")
    order = np.argsort(s, kind="stable")
    s, d = s[order], d[order]
    last_s, last_d = 0.0, float(baseline)
    for si, di in zip(s, d):
        if not np.isfinite(di) or di > ceiling:
            if not interpolate or not np.isfinite(di) or si == last_s:
                return float(last_s)
            return float(last_s + (ceiling - last_d) * (si - last_s) / (di - last_d))
        last_s, last_d = float(si), float(di)
    return float(last_s)


@dataclass
class CalibrationResult:
    """Damage per direction and strength, and the usable window it implies.

    ``ppl_ratio`` and ``kl`` are ``[directions, strengths]``; ``kinds`` says which directions are
    emotions and which random controls; ``window`` is the smallest usable magnitude over the
    emotion directions (both signs where both were swept).
    """

    labels: list[str]
    kinds: list[str]
    strengths: list[float]
    ppl_ratio: np.ndarray
    kl: np.ndarray
    ceiling: float
    layers: list[int]
    scope: Any
    n_texts: int
    n_tokens: int
    window_by_direction: dict[str, dict[str, float]] = field(default_factory=dict)
    window: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ppl_ratio"] = np.asarray(self.ppl_ratio).tolist()
        d["kl"] = np.asarray(self.kl).tolist()
        d["scope"] = repr(self.scope)
        return d


def _logprobs(model, steering: Steering | None, scope: Any, ids: torch.Tensor, mask: torch.Tensor,
              valid: torch.Tensor) -> torch.Tensor:
    """Next-token log-probs ``[n_valid, vocab]`` at the positions that predict a real token."""
    with apply_steering(model, steering, (scope,)):
        h = hidden_states(model, ids, mask)
    return torch.log_softmax(lm_logits(model, h[:, :-1][valid]).cpu(), dim=-1)


def damage_sweep(model, tokenizer, texts: Sequence[str], steerings: Sequence[Steering], strengths: Sequence[float],
                 scope: Any = 1, max_length: int = 64, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray, int]:
    """Perplexity ratio and mean KL ``[len(steerings), len(strengths)]`` vs the unsteered model.

    Loops batches outside and conditions inside, so the unsteered log-probs of one batch are held
    in memory only while that batch is compared with every condition. ``scope`` defaults to ``1``:
    every position but the first (the attention sink, whose norm is unlike any other's).
    """
    enc = [tokenizer(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    enc = [e for e in enc if len(e) >= 2]
    if not enc:
        raise ValueError("No neutral text has two tokens or more.")
    pad = pad_id_of(tokenizer)
    n_d, n_s = len(steerings), len(strengths)
    nll = np.zeros((n_d, n_s))
    kl = np.zeros((n_d, n_s))
    nll0 = 0.0
    count = 0
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            ids, mask = pad_left([enc[i] for i in order[b:b + batch_size]], pad)
            valid = (mask[:, :-1] * mask[:, 1:]).bool()
            tgt = ids[:, 1:]

            base = _logprobs(model, None, scope, ids, mask, valid)
            t = tgt[valid]
            nll0 += float(-base[torch.arange(len(t)), t].sum())
            p0 = base.exp()
            count += len(t)
            for i, st in enumerate(steerings):
                for j, s in enumerate(strengths):
                    lp = _logprobs(model, st.scaled(s), scope, ids, mask, valid)
                    nll[i, j] += float(-lp[torch.arange(len(t)), t].sum())
                    kl[i, j] += float((p0 * (base - lp)).sum())
    ppl_ratio = np.exp((nll - nll0) / count)
    return ppl_ratio, kl / count, count


def calibrate(model, tokenizer, vectors, texts: Sequence[str], emotions: Sequence[str], strengths: Sequence[float],
              layers: Sequence[int] | int | None = None, n_random: int = 2, ceiling: float = 1.5, seed: int = 0,
              scope: Any = 1, max_length: int = 64, batch_size: int = 4) -> CalibrationResult:
    """Sweep ``strengths`` (signed, in units of the mean residual norm) for each emotion and
    ``n_random`` random directions at ``layers``; return the damage and the usable window."""
    strengths = [float(s) for s in strengths]
    if any(s == 0 for s in strengths):
        raise ValueError("Leave strength 0 out of the sweep: it is the reference (damage 1 and 0 by construction).")
    steerings = [vectors.steering(e, 1.0, layers=layers) for e in emotions]
    lay = steerings[0].layers if steerings else ([vectors.default_layer] if layers is None else list(np.atleast_1d(layers)))
    rand = random_directions(vectors.width, n_random, seed)
    steerings += [vectors.steering(r, 1.0, layers=lay, label=name) for r, name in zip(rand, random_labels(n_random))]
    kinds = ["emotion"] * len(emotions) + ["random"] * n_random
    ppl, kl, n_tok = damage_sweep(model, tokenizer, texts, steerings, strengths, scope, max_length, batch_size)
    res = CalibrationResult(labels=[s.label for s in steerings], kinds=kinds, strengths=strengths, ppl_ratio=ppl,
                            kl=kl, ceiling=float(ceiling), layers=[int(x) for x in lay], scope=scope,
                            n_texts=len(texts), n_tokens=n_tok)
    res.window_by_direction, res.window = windows(res.labels, res.kinds, strengths, ppl, ceiling)
    return res


def windows(labels: Sequence[str], kinds: Sequence[str], strengths: Sequence[float], damage: np.ndarray,
            ceiling: float) -> tuple[dict[str, dict[str, float]], float]:
    """Per direction, the usable magnitude for each sign swept (and their minimum); overall, the
    minimum over the emotion directions (over every direction if none is an emotion)."""
    s = np.asarray(strengths, dtype=float)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        w: dict[str, float] = {}
        for sign, sel in (("positive", s > 0), ("negative", s < 0)):
            if sel.any():
                w[sign] = usable_strength(np.abs(s[sel]), damage[i, sel], ceiling)
        w["both"] = min(w.values()) if w else float("nan")
        out[name] = w
    emo = [out[n]["both"] for n, k in zip(labels, kinds) if k == "emotion"] or [w["both"] for w in out.values()]
    return out, float(min(emo)) if emo else float("nan")


def neutral_texts(run_dir, n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` neutral dialogues for the damage measurement: the run's own (01 writes
    ``<run>/stories/neutral.jsonl``), else the package's reference set. Returns the texts
    and where they came from. Sampled with a seed, so every run measures on the same texts."""
    import json
    from importlib import resources
    from pathlib import Path

    recs: list[dict] = []
    source = ""
    try:
        from emolib.study.corpus import load_corpus

        recs = list(load_corpus(str(run_dir), kind="neutral"))
        source = f"{run_dir}/stories/neutral.jsonl"
    except Exception:  # no loader yet, or no neutral file in the run
        path = Path(run_dir) / "stories" / "neutral.jsonl"
        if path.exists():
            recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            recs = [r for r in recs if r.get("kept", True)]
            source = str(path)
    if not recs:
        ref = resources.files("emolib.data").joinpath("reference", "neutral.jsonl")
        recs = [json.loads(line) for line in ref.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = "emolib/data/reference/neutral.jsonl"
    texts = [r["text"] if isinstance(r, dict) else r.text for r in recs]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(texts))[:n]
    return [texts[i] for i in sorted(pick)], source




def plot_calibration(res: CalibrationResult | Mapping[str, Any]):
    """Perplexity ratio and KL against strength, one line per direction, ceiling and window marked."""
    import matplotlib.pyplot as plt

    d = res.to_dict() if isinstance(res, CalibrationResult) else dict(res)
    s = np.asarray(d["strengths"])
    order = np.argsort(s)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, kind) in enumerate(zip(d["labels"], d["kinds"])):
        style = dict(color="0.6", ls="--", lw=1) if kind == "random" else dict(lw=1.6)
        for ax, key in zip(axes, ("ppl_ratio", "kl")):
            y = np.asarray(d[key])[i]
            ax.plot(s[order], y[order], marker="o", ms=3, label=name, **style)
    axes[0].axhline(d["ceiling"], color="k", lw=0.8, label=f"ceiling (x{d['ceiling']:g})")
    for ax in axes:
        ax.axvspan(-d["window"], d["window"], color="tab:green", alpha=0.08, label="usable window")
        ax.set_xlabel("strength (x mean residual norm)")
    axes[0].set_ylabel("perplexity ratio vs unsteered")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("mean next-token KL (nats)")
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[1].legend(fontsize=7, ncol=2)
    axes[0].legend(handles=axes[0].get_legend_handles_labels()[0][-2:], fontsize=7, loc="upper center")
    fig.suptitle(f"Steering damage on neutral text, layer(s) {d['layers']}; usable window |s| <= {d['window']:.2f}")
    fig.tight_layout()
    return fig
