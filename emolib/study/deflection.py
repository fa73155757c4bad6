"""Emotion deflection vectors (the paper's section of that name).

The data (``emolib/data/dialogues/deflection.jsonl``, written by us): a scenario paragraph in which a
named character genuinely feels a *target* emotion but shows another (the *displayed* one), with a
reason to hide it, then a short exchange (the other person speaks, the character answers, twice, in
299 of the 300 scenes; once in one) in which the character's words show only the displayed emotion. 15 targets x 4 displayed emotions x 5 dialogues.

The vector of a target is the mean block output over the character's spoken tokens, averaged over its
dialogues, minus the mean over targets, with the neutral components projected out (the story recipe).
What the paper reports, and what :func:`summary` measures here:

* the deflection vector is nearly orthogonal to the same emotion's story vector, and partly aligned
  with the story vectors of the emotions displayed instead;
* after projecting out the story-vector subspace (principal components covering 99 % of its variance)
  about 80 % of its norm remains, and the remainder's logit lens still names the target. The floor for
  this number is what a *random* direction keeps (``sqrt(1 - k / width)`` in expectation), measured too;
* the vectors fire on short denials ("I'm not angry.", "It's just family stuff.");
* steering toward them raises denials ("I'm not desperate") rather than the emotion (stage 06).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolib.capture import masked_means
from emolib.chat import encode, encode_chat, token_span
from emolib.study.geometry import unit_rows
from emolib.study.speakers import load_dialogues, probe_texts
from emolib.vectors import EmotionVectors, NeutralPCA, compute_vectors

PAPER = {"story_cos": "nearly orthogonal (Fig. 61)", "residual_fraction": 0.80}


def load_deflection() -> list[dict[str, Any]]:
    """The deflection dialogues shipped with emolib."""
    return load_dialogues("deflection.jsonl")


def dataset_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dialogues per target, displayed emotions per target, turns per dialogue."""
    import collections

    per = collections.Counter(r["target"] for r in records)
    shown = collections.defaultdict(set)
    for r in records:
        shown[r["target"]].add(r["displayed"])
    char_turns = [sum(t["speaker"] == r["character"] for t in r["turns"]) for r in records]
    return {"n_dialogues": len(records), "n_targets": len(per), "per_target_min": min(per.values()),
            "per_target_max": max(per.values()), "displayed_per_target_min": min(len(v) for v in shown.values()),
            "character_turns_min": min(char_turns), "character_turns_max": max(char_turns),
            "targets": sorted(per), "topics": len({r.get("topic_id") for r in records})}


def render(record: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """The text the model reads (scenario, then ``Name: line`` turns) and the character spans of the
    character's own lines."""
    text = record["scenario"].strip() + "\n\n"
    spans = []
    for t in record["turns"]:
        head = f"{t['speaker']}: "
        start = len(text) + len(head)
        text += head + t["text"].strip() + "\n"
        if t["speaker"] == record["character"]:
            spans.append((start, start + len(t["text"].strip())))
    if not spans:
        raise ValueError(f"Deflection record {record.get('id')!r}: the character {record['character']!r} never speaks.")
    return text.rstrip("\n"), spans


def character_mask(tokenizer, record: dict[str, Any]) -> tuple[list[int], torch.Tensor]:
    """Token ids of the rendered record and a ``[1, n]`` mask of the character's spoken tokens."""
    text, spans = render(record)
    ids, offsets = encode(tokenizer, text, chat=False)
    mask = torch.zeros(1, len(ids), dtype=torch.bool)
    for a, b in spans:
        i, j = token_span(offsets, a, b)
        mask[0, i:j] = True
    return ids, mask


@dataclass
class DeflectionActivations:
    """Per dialogue, the mean block output over the character's lines at every layer: ``x [n, layers, width]``."""

    x: torch.Tensor
    layers: list[int]
    targets: list[str]
    displayed: list[str]
    ids: list[str]
    topics: list[Any] = field(default_factory=list)  # topic id per dialogue: held-out folds keep topics apart


def pool_records(model, tokenizer, records: Sequence[dict[str, Any]], layers: Sequence[int], batch_size: int = 8,
                 cache: str | Path | None = None, model_id: str = "") -> DeflectionActivations:
    """Read every record once (cached in ``cache`` if given)."""
    from emolib.study.activations import cached_masked_means

    x, _ = cached_masked_means(model, tokenizer, records, lambda r: character_mask(tokenizer, r), layers, cache=cache,
                               model_id=model_id, batch_size=batch_size, desc="deflection dialogues")
    return DeflectionActivations(x[:, 0], list(layers), [r["target"] for r in records],
                                 [r["displayed"] for r in records], [r["id"] for r in records],
                                 [r.get("topic_id") for r in records])


def build_vectors(acts: DeflectionActivations, norms, pca: NeutralPCA | None, threshold: float,
                  rows: Sequence[int] | None = None, meta: dict[str, Any] | None = None) -> EmotionVectors:
    """One deflection vector per target: mean over its dialogues minus the mean over targets, denoised."""
    rows = list(range(len(acts.ids))) if rows is None else list(rows)
    emotions = sorted(set(acts.targets))
    return compute_vectors(acts.x[rows], [acts.targets[i] for i in rows], acts.layers, norms, emotions=emotions,
                           neutral=pca, threshold=threshold, meta=dict(meta or {}, kind="deflection"))


def story_subspace(stories: EmotionVectors, layer: int, variance: float = 0.99) -> np.ndarray:
    """Orthonormal rows spanning the principal components of the story vectors that cover ``variance``."""
    v = stories.at(layer).numpy().astype(np.float64)
    v = v - v.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(v, full_matrices=False)
    ratio = np.cumsum(s ** 2) / np.sum(s ** 2)
    k = int(np.searchsorted(ratio, variance - 1e-12) + 1)
    return vt[:k]


def residual_fraction(d: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``|d - proj(d)| / |d|`` per row: the share of each vector's norm outside the subspace."""
    res = d - (d @ basis.T) @ basis
    return np.linalg.norm(res, axis=-1) / np.maximum(np.linalg.norm(d, axis=-1), 1e-12)


def summary(defl: EmotionVectors, stories: EmotionVectors, layer: int, display: dict[str, list[str]],
            n_random: int = 500, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Per target: cosine with its own story vector (and that cosine's rank among all story emotions),
    mean cosine with the displayed emotions' story vectors, and the norm share left outside the story
    subspace; with floors: the mean |cosine| with all other story vectors, and a random direction's share."""
    import pandas as pd

    d = unit_rows(defl.at(layer).numpy().astype(np.float64))
    s = unit_rows(stories.at(layer).numpy().astype(np.float64))
    basis = story_subspace(stories, layer)
    frac = residual_fraction(d, basis)
    rng = np.random.default_rng(seed)
    rand = residual_fraction(rng.standard_normal((n_random, d.shape[1])), basis)
    rows = []
    for i, t in enumerate(defl.emotions):
        cos = s @ d[i]
        own = stories.emotions.index(t) if t in stories.emotions else None  # 02 may have run on a subset
        shown = [stories.emotions.index(e) for e in display.get(t, []) if e in stories.emotions]
        others = np.delete(cos, [own]) if own is not None else cos
        rows.append({"target": t, "cos own story": float(cos[own]) if own is not None else np.nan,
                     "rank of own": int((cos > cos[own]).sum()) + 1 if own is not None else None,
                     "cos displayed (mean)": float(cos[shown].mean()) if shown else np.nan,
                     "displayed": ", ".join(display.get(t, [])),
                     "nearest story emotions": ", ".join(stories.emotions[j] for j in np.argsort(-cos)[:3]),
                     "mean |cos| other stories": float(np.abs(others).mean()), "norm left": float(frac[i])})
    df = pd.DataFrame(rows)
    data = {"layer": layer, "story_pcs_99": int(basis.shape[0]), "width": int(d.shape[1]),
            "norm_left_mean": float(frac.mean()), "random_norm_left_mean": float(rand.mean()),
            "random_norm_left_sd": float(rand.std()), "paper_norm_left": PAPER["residual_fraction"],
            "cos_own_mean": float(df["cos own story"].mean()),
            "cos_displayed_mean": float(df["cos displayed (mean)"].dropna().mean()),
            "abs_cos_other_mean": float(df["mean |cos| other stories"].mean()), "rows": rows}
    return df, data


def residual_vectors(defl: EmotionVectors, stories: EmotionVectors, layer: int) -> EmotionVectors:
    """The deflection vectors at ``layer`` with the story subspace (99 %) projected out, as a one-layer set
    (for the logit lens)."""
    basis = torch.as_tensor(story_subspace(stories, layer), dtype=torch.float32)
    v = defl.at(layer)
    res = v - (v @ basis.T) @ basis
    i = defl.layers.index(layer)
    return EmotionVectors(res.unsqueeze(0), defl.emotions, [layer], defl.norms[i:i + 1], default_layer=layer,
                          meta={"kind": "deflection minus story subspace"})


def split_half(acts: DeflectionActivations, norms, pca, threshold: float, layer: int, reps: int = 10,
               seed: int = 0) -> float:
    """Mean same-target cosine between deflection vectors built from two random halves of each target's dialogues."""
    rng = np.random.default_rng(seed)
    by = {}
    for i, t in enumerate(acts.targets):
        by.setdefault(t, []).append(i)
    vals = []
    for _ in range(reps):
        a, b = [], []
        for rows in by.values():
            p = rng.permutation(rows)
            a += list(p[: len(p) // 2])
            b += list(p[len(p) // 2:])
        u = unit_rows(build_vectors(acts, norms, pca, threshold, a).at(layer).numpy())
        v = unit_rows(build_vectors(acts, norms, pca, threshold, b).at(layer).numpy())
        vals.append(float(np.mean(np.sum(u * v, axis=1))))
    return float(np.mean(vals))


def heldout(acts: DeflectionActivations, norms, pca, threshold: float, layer: int, stories: EmotionVectors,
            n_folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Held-out top-1 (folds over dialogues, stratified by target, and grouped by topic when topics are
    known, so no topic is on both sides) of: deflection vectors reading the hidden target; story vectors
    (over the targets) reading the hidden target; story vectors (over the displayed emotions) reading the
    displayed emotion. What a dialogue *shows* vs what its character *feels*. Beside each chance level
    (1 / classes) is the majority-class rate: the displayed emotions are uneven (calm is shown far more
    often than grateful), so always answering the commonest one beats 1 / classes."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    li = acts.layers.index(layer)
    targets = sorted(set(acts.targets))
    in_stories = [t for t in targets if t in set(stories.emotions)]  # 02 may have run on a subset
    shown = sorted(set(acts.displayed) & set(stories.emotions))
    st = stories.select(in_stories).at(layer).numpy()
    st = unit_rows(st - st.mean(0, keepdims=True))
    sd = stories.select(shown).at(layer).numpy()
    sd = unit_rows(sd - sd.mean(0, keepdims=True))
    hits = {"deflection→target": [], "story→target": [], "story→displayed": []}
    grouped = len(acts.topics) == len(acts.ids) and all(t is not None for t in acts.topics)
    if grouped:
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            np.zeros(len(acts.ids)), acts.targets, groups=acts.topics)
    else:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(acts.ids)),
                                                                                         acts.targets)
    for train, test in folds:
        dv = unit_rows(build_vectors(acts, norms, pca, threshold, train).at(layer).numpy())
        x = acts.x[test, li].numpy()
        x = unit_rows(x - acts.x[train, li].numpy().mean(0, keepdims=True))
        tt = np.asarray([acts.targets[i] for i in test])
        hits["deflection→target"] += list(np.asarray(targets)[np.argmax(x @ dv.T, 1)] == tt)
        kt = np.isin(tt, in_stories)
        hits["story→target"] += list(np.asarray(in_stories)[np.argmax(x[kt] @ st.T, 1)] == tt[kt])
        dd = np.asarray([acts.displayed[i] for i in test])
        keep = np.isin(dd, shown)
        hits["story→displayed"] += list(np.asarray(shown)[np.argmax(x[keep] @ sd.T, 1)] == dd[keep])
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    out.update({"chance_target": 1 / len(targets), "chance_story_target": 1 / len(in_stories),
                "chance_displayed": 1 / len(shown), "n": len(acts.ids), "grouped_by_topic": grouped,
                "majority_displayed": _majority([d for d in acts.displayed if d in set(shown)])})
    return out


def _majority(labels: Sequence[str]) -> float:
    """The share of the commonest label: what always guessing it scores."""
    from collections import Counter

    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else float("nan")


# ---- denials -----------------------------------------------------------------------------------


def denial_lines() -> tuple[list[str], list[str], list[str]]:
    """``(texts, target of each ("" for the neutral controls), kind: explicit / implied / neutral)``."""
    spec = probe_texts()
    texts, targets, kinds = [], [], []
    for t, lines in spec["denials"].items():
        for k, line in enumerate(lines):
            texts.append(line)
            targets.append(t)
            kinds.append("explicit" if k == 0 else "implied")
    for line in spec["neutral_lines"]:
        texts.append(line)
        targets.append("")
        kinds.append("neutral")
    return texts, targets, kinds


def read_lines(model, tokenizer, texts: Sequence[str], layers: Sequence[int], batch_size: int = 16) -> torch.Tensor:
    """Mean block output over each line's own tokens, the line read as a user message: ``[n, layers, width]``."""
    ids, masks = [], []
    for t in texts:
        ct = encode_chat(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=False)
        ids.append(ct.ids)
        masks.append(torch.tensor([ct.content]))
    x, _ = masked_means(model, tokenizer, ids, masks, layers=layers, batch_size=batch_size)
    return x[:, 0]


def denial_readings(x: torch.Tensor, layers: Sequence[int], layer: int, targets: Sequence[str], kinds: Sequence[str],
                    defl: EmotionVectors, stories: EmotionVectors) -> tuple[Any, dict[str, Any]]:
    """Cosine of each line (centred on the mean of all lines) with each deflection vector and with the
    same targets' story vectors; per kind, how often the line's own target is the top of the 15."""
    import pandas as pd

    xi = x[:, list(layers).index(layer)].numpy().astype(np.float64)
    xi = unit_rows(xi - xi.mean(0, keepdims=True))
    names = list(defl.emotions)
    snames = [e for e in names if e in set(stories.emotions)]  # 02 may have run on a subset
    d = unit_rows(defl.at(layer).numpy().astype(np.float64))
    s = stories.select(snames).at(layer).numpy().astype(np.float64)
    s = unit_rows(s - s.mean(0, keepdims=True))
    cd, cs = xi @ d.T, xi @ s.T
    rows, stats = [], {}
    for i, (t, k) in enumerate(zip(targets, kinds)):
        row = {"target": t or "(neutral)", "kind": k}
        if t:
            j = names.index(t)
            row.update({"deflection cos": float(cd[i, j]), "deflection rank": int((cd[i] > cd[i, j]).sum()) + 1,
                        "story cos": np.nan, "story rank": np.nan})
            if t in snames:
                js = snames.index(t)
                row.update({"story cos": float(cs[i, js]), "story rank": int((cs[i] > cs[i, js]).sum()) + 1})
        rows.append(row)
    df = pd.DataFrame(rows)
    for k in ("explicit", "implied"):
        sub = df[df["kind"] == k]
        has = sub["story rank"].notna()
        stats[k] = {"deflection_top1": float((sub["deflection rank"] == 1).mean()),
                    "story_top1": float((sub["story rank"][has] == 1).mean()) if has.any() else float("nan"),
                    "deflection_cos": float(sub["deflection cos"].mean()), "story_cos": float(sub["story cos"].mean()),
                    "n": len(sub)}
    neutral = [i for i, k in enumerate(kinds) if k == "neutral"]
    stats["neutral_max_deflection_cos_mean"] = float(cd[neutral].max(1).mean()) if neutral else None
    stats["chance_top1"] = 1 / len(names)
    stats["story_emotions"] = len(snames)
    return df, stats


def heatmap_figure(x: torch.Tensor, layers: Sequence[int], layer: int, texts: Sequence[str], targets: Sequence[str],
                   defl: EmotionVectors):
    """Lines x deflection vectors, cosine (centred lines): denials should light their own target's column."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    xi = x[:, list(layers).index(layer)].numpy().astype(np.float64)
    xi = unit_rows(xi - xi.mean(0, keepdims=True))
    c = xi @ unit_rows(defl.at(layer).numpy().astype(np.float64)).T
    fig, ax = plt.subplots(figsize=(9, 0.19 * len(texts) + 1.6))
    labels = [f"[{t or '-'}] {s[:38]}" for s, t in zip(texts, targets)]
    lim = float(np.abs(c).max()) or 1.0
    sns.heatmap(c, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, xticklabels=defl.emotions, yticklabels=labels, ax=ax,
                cbar_kws={"label": "cosine"})
    ax.tick_params(axis="y", labelsize=6)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"Short denials and neutral lines read by the deflection vectors (block {layer})", fontsize=9)
    fig.tight_layout()
    return fig, {"texts": list(texts), "targets": list(targets), "emotions": list(defl.emotions), "cosine": c}


def summary_figure(data: dict[str, Any]):
    """Own-story cosine, displayed-emotion cosine, and norm left outside the story subspace, per target."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(data["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(df))
    axes[0].bar(x - 0.2, df["cos own story"], 0.4, label="own story vector", color="tab:blue")
    axes[0].bar(x + 0.2, df["cos displayed (mean)"], 0.4, label="displayed emotions' story vectors", color="tab:orange")
    axes[0].axhspan(-data["abs_cos_other_mean"], data["abs_cos_other_mean"], color="grey", alpha=0.2,
                    label="mean |cos| with other story vectors")
    axes[0].set_xticks(x, df["target"], rotation=60, fontsize=7)
    axes[0].set_ylabel("cosine")
    axes[0].legend(fontsize=7)
    axes[0].set_title("Deflection vector vs story vectors", fontsize=9)
    axes[1].bar(x, df["norm left"], color="tab:purple")
    axes[1].axhline(data["random_norm_left_mean"], color="grey", ls="--", label="random direction")
    axes[1].axhline(data["paper_norm_left"], color="black", ls=":", label="paper (~0.8)")
    axes[1].set_ylim(0, 1)
    axes[1].set_xticks(x, df["target"], rotation=60, fontsize=7)
    axes[1].set_title(f"Norm left outside the story subspace ({data['story_pcs_99']} PCs, 99 %)", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Deflection vectors at block {data['layer']}", fontsize=10)
    fig.tight_layout()
    return fig, data


# ---- stage glue and steering ---------------------------------------------------------------------


def run_activations(model, tokenizer, info, run: str | Path, batch_size: int = 8) -> DeflectionActivations:
    """The deflection activations of this run's model (pooled once, then read from
    ``<run>/activations/deflection.safetensors``)."""
    return pool_records(model, tokenizer, load_deflection(), list(range(info.n_layers)), batch_size=batch_size,
                        cache=Path(run) / "activations" / "deflection.safetensors", model_id=f"{info.name}@{info.revision}")


def vectors_path(run: str | Path) -> Path:
    return Path(run) / "deflection_vectors.safetensors"


def displayed_by_target(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Which emotions each target's dialogues display instead."""
    out: dict[str, set[str]] = {}
    for r in records:
        out.setdefault(r["target"], set()).add(r["displayed"])
    return {k: sorted(v) for k, v in out.items()}


def denial_steering(model, tokenizer, defl: EmotionVectors, stories: EmotionVectors, layer: int, strength: float,
                    n_random: int = 10, seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Steer the answer to "how are you feeling?" toward a target's deflection vector or its story vector,
    and read the log-odds of a denial ("I'm not afraid.") over an admission ("I'm afraid."), averaged over
    the prompts of ``probes.json``; change from unsteered, per target. Random directions of the same
    strength give the noise band. The paper: deflection vectors produce denial, not the emotion."""
    from emolib.study.scoring import reply_logprobs

    users = probe_texts()["deflection_prompts"]
    targets = list(defl.emotions)
    pairs = {t: [f"I'm not {t}.", f"I'm {t}."] for t in targets}
    generic = ["I'm fine.", "It's nothing."]

    def log_odds(steering, ts) -> dict[str, float]:
        replies = [r for t in ts for r in pairs[t]] + generic
        lp = reply_logprobs(model, tokenizer, users, replies, steering, batch_size).numpy().mean(0)
        out = {t: float(lp[2 * i] - lp[2 * i + 1]) for i, t in enumerate(ts)}
        out["_generic"] = float(np.logaddexp.reduce(lp[-len(generic):]))
        return out

    base = log_odds(None, targets)
    res: dict[str, Any] = {"targets": targets, "strength": strength, "layer": layer, "prompts": users,
                           "base": base, "conditions": {}}
    for name, vecs in (("deflection", defl), ("story", stories)):
        d, gen = [], []
        for t in targets:
            if t not in vecs.emotions:  # story vectors of a subset run
                d.append(np.nan)
                gen.append(np.nan)
                continue
            lo = log_odds(vecs.steering(t, strength, layers=layer), [t])
            d.append(lo[t] - base[t])
            gen.append(lo["_generic"] - base["_generic"])
        res["conditions"][name] = {"denial_vs_admission": np.asarray(d), "generic_denial": np.asarray(gen)}
    g = torch.Generator().manual_seed(seed)
    rand, rgen = [], []
    for _ in range(n_random):
        lo = log_odds(defl.steering(torch.randn(defl.width, generator=g), strength, layers=layer), targets)
        rand.append([lo[t] - base[t] for t in targets])
        rgen.append(lo["_generic"] - base["_generic"])
    res["random"] = {"denial_vs_admission": np.asarray(rand), "generic_denial": np.asarray(rgen)}
    return res


def denial_steering_table(res: dict[str, Any]):
    """Per target: change in log-odds(denial : admission) under the deflection and the story vector, the
    random band, and the change in the generic denials' log-probability."""
    import pandas as pd

    r = res["random"]["denial_vs_admission"]
    df = pd.DataFrame({"deflection": res["conditions"]["deflection"]["denial_vs_admission"],
                       "story": res["conditions"]["story"]["denial_vs_admission"],
                       "random min": r.min(0), "random max": r.max(0),
                       "generic denial (deflection)": res["conditions"]["deflection"]["generic_denial"],
                       "generic denial (story)": res["conditions"]["story"]["generic_denial"]}, index=res["targets"])
    return df


def denial_steering_figure(res: dict[str, Any]):
    """Change in log-odds(denial : admission) per target under deflection vs story steering, random band."""
    import matplotlib.pyplot as plt

    t = res["targets"]
    x = np.arange(len(t))
    r = res["random"]["denial_vs_admission"]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.fill_between(x, r.min(0), r.max(0), color="grey", alpha=0.25, step="mid", label="random directions")
    ax.bar(x - 0.2, res["conditions"]["deflection"]["denial_vs_admission"], 0.4, label="deflection vector")
    ax.bar(x + 0.2, res["conditions"]["story"]["denial_vs_admission"], 0.4, label="story vector")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(x, t, rotation=45, fontsize=8)
    ax.set_ylabel("Δ log-odds  \"I'm not X.\" : \"I'm X.\"")
    ax.set_title(f"Steering toward a hidden emotion at block {res['layer']} ({res['strength']:.2f} x norm): "
                 "denial or admission?", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()

    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return fig, plain(res)


def check_rows(summary_: dict[str, Any], acc: dict[str, float], half: float, den: dict[str, Any],
               layer: int) -> list[dict[str, Any]]:
    """Stage 03's headline rows for the deflection vectors."""
    return [
        {"key": "deflection_dialogues", "label": "deflection dialogues (per target, min)", "ours": summary_["n_dialogues"],
         "paper": None, "note": f"{summary_['n_targets']} targets x >= {summary_['displayed_per_target_min']} displayed, "
                                f">= {summary_['per_target_min']} each"},
        {"key": "deflection_heldout_target", "label": "held-out top-1: deflection vectors read the hidden emotion",
         "ours": acc["deflection→target"], "paper": None,
         "note": f"story vectors read the hidden one {acc['story→target']:.3f}, the displayed one "
                 f"{acc['story→displayed']:.3f} (chance {acc['chance_displayed']:.3f}, commonest shown emotion "
                 f"{acc.get('majority_displayed', float('nan')):.3f}); chance {acc['chance_target']:.3f}; "
                 f"split-half cos {half:.2f}; "
                 f"block {layer}"},
        {"key": "denials_implied_top1", "label": "implied denials: own deflection vector is the top of 15",
         "ours": den["implied"]["deflection_top1"], "paper": "fires on denials",
         "note": f"story vectors {den['implied']['story_top1']:.3f}; explicit ('I'm not X.'): deflection "
                 f"{den['explicit']['deflection_top1']:.3f}, story {den['explicit']['story_top1']:.3f}; chance "
                 f"{den['chance_top1']:.3f}"},
    ]


def map_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 04's headline rows: story-vector cosines and the norm left outside the story subspace."""
    return [
        {"key": "deflection_cos_own_story", "label": "cos(deflection vector, same emotion's story vector), mean",
         "ours": data["cos_own_mean"], "paper": "near 0",
         "note": f"mean |cos| with other story vectors {data['abs_cos_other_mean']:.3f}; block {data['layer']}"},
        {"key": "deflection_cos_displayed", "label": "cos with the displayed emotions' story vectors, mean",
         "ours": data["cos_displayed_mean"], "paper": "partly aligned", "note": ""},
        {"key": "deflection_norm_left", "label": "norm left after removing the story subspace (99 %)",
         "ours": data["norm_left_mean"], "paper": data["paper_norm_left"],
         "note": f"{data['story_pcs_99']} PCs of {data['width']} dims; a random direction keeps "
                 f"{data['random_norm_left_mean']:.3f} (sd {data['random_norm_left_sd']:.3f})"},
    ]


def steer_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 06's rows: mean change of log-odds(denial : admission) under deflection and story steering."""
    r = res["random"]["denial_vs_admission"]
    rows = []
    for name in ("deflection", "story"):
        v = res["conditions"][name]["denial_vs_admission"]
        rows.append({"key": f"denial_steer_{name}", "label": f"steering toward the {name} vector: Δ log-odds "
                     "'I'm not X.' : 'I'm X.'", "ours": float(np.nanmean(v)),
                     "paper": "denial rises" if name == "deflection" else None,
                     "note": f"{int((v > r.max(0)).sum())} of {len(v)} targets above every random direction; random "
                             f"mean {float(r.mean()):.3f}; generic denials Δ {float(np.nanmean(res['conditions'][name]['generic_denial'])):.3f}"})
    return rows
