"""Base vs instruct: what post-training does to the emotion probes (the paper's post-training comparison).

The paper applies the post-trained model's vectors to both the pretrained base and the final model,
reads the cosine between each probe and the activation at the Assistant colon on a set of prompts
(AI-specific challenging ones and neutral controls), and reports, per emotion, post minus base (its
Table 16: brooding, gloomy, reflective, vulnerable up; spiteful, playful, exuberant, enthusiastic
down: lower arousal and valence). Its structure numbers: base vs post profiles r = 0.83 on neutral
and 0.67 on challenging prompts, and the change vectors of the two prompt types r = 0.90.

Here the pair is (``base_model``, the run's model): the run's vectors are the instruct model's, as in
the paper. Both models must share a tokenizer (checked: the same prompt must give the same token
ids). :func:`read_pair` reads the prompts with both, :func:`compare` sets the per-emotion shift
beside the paper's Table 16 (rank correlation over the emotions both have), and
:func:`valence_in_pcs` asks where valence sits in each model's own story-vector PCs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from emolib.capture import pooled_means
from emolib.chat import format_user_turn
from emolib.study.implicit import header_activations
from emolib.vectors import EmotionVectors, compute_vectors

PAPER = {"r_neutral": 0.83, "r_challenging": 0.67, "r_change": 0.90}


@cache
def prompts() -> dict[str, list[str]]:
    """``{"challenging": [...], "neutral": [...]}`` (``emolib/data/post_training_prompts.json``)."""
    spec = json.loads(resources.files("emolib.data").joinpath("post_training_prompts.json").read_text(encoding="utf-8"))
    return {"challenging": spec["challenging"], "neutral": spec["neutral"]}


@cache
def paper_table() -> dict[str, dict[str, float]]:
    """The paper's Table 16: ``emotion -> {"diff", "base", "post_trained"}``."""
    spec = json.loads(resources.files("emolib.data").joinpath("post_training_diffs_171.json").read_text(encoding="utf-8"))
    return {r["emotion"]: r for r in spec["rows"]}


def check_same_tokenizer(tok_instruct, tok_base, texts: Sequence[str]) -> None:
    """Raise unless both tokenizers turn every prompt, as the instruct model's format renders it, into the
    same ids. Both models then read identical inputs (the paper fed the base model the same transcripts);
    a base tokenizer without a chat template is fine, an unrelated vocabulary is not."""
    for t in texts:
        text = format_user_turn(tok_instruct, t).text
        a = tok_instruct(text, add_special_tokens=False)["input_ids"]
        b = tok_base(text, add_special_tokens=False)["input_ids"]
        if list(a) != list(b):
            raise ValueError("The base and instruct models tokenize the prompts differently (first prompt that "
                             f"differs: {t!r}); a base-vs-instruct comparison needs one family's pair.")


@dataclass
class PairReadout:
    """Cosine of every probe with the header activation of every prompt, per model and layer."""

    cos: dict[str, np.ndarray]  # "base" / "instruct" -> [prompts, layers, emotions]
    kinds: list[str]  # "challenging" / "neutral" per prompt
    layers: list[int]
    emotions: list[str]
    names: dict[str, str]  # "base" / "instruct" -> model name


def read_pair(models: dict[str, Any], tokenizer, vectors: EmotionVectors, batch_size: int = 8,
              names: dict[str, str] | None = None) -> PairReadout:
    """Read the prompt set with ``models = {"base": model, "instruct": model}`` and the run's vectors."""
    p = prompts()
    texts = p["challenging"] + p["neutral"]
    kinds = ["challenging"] * len(p["challenging"]) + ["neutral"] * len(p["neutral"])
    layers = list(vectors.layers)
    cos = {}
    for k, m in models.items():
        x = header_activations(m, tokenizer, texts, layers, batch_size=batch_size)
        cos[k] = np.stack([vectors.cosine(x[:, i], layer).numpy() for i, layer in enumerate(layers)], axis=1)
    return PairReadout(cos, kinds, layers, list(vectors.emotions), dict(names or {k: k for k in models}))


def compare(ro: PairReadout, layer: int, n_boot: int = 2000, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Per emotion: mean cosine on the challenging prompts in each model and post minus base, beside the
    paper's Table 16; the structure numbers; and the rank correlation with the paper, at ``layer``."""
    import pandas as pd

    from emolib.stats import pearson, spearman

    li = ro.layers.index(layer)
    kinds = np.asarray(ro.kinds)
    mean = {(m, k): ro.cos[m][kinds == k, li].mean(0) for m in ro.cos for k in ("challenging", "neutral")}
    diff = {k: mean[("instruct", k)] - mean[("base", k)] for k in ("challenging", "neutral")}
    table = paper_table()
    df = pd.DataFrame({"emotion": ro.emotions, "base": mean[("base", "challenging")],
                       "instruct": mean[("instruct", "challenging")], "diff": diff["challenging"],
                       "diff (neutral prompts)": diff["neutral"],
                       "paper diff": [table[e]["diff"] if e in table else np.nan for e in ro.emotions]})
    df = df.sort_values("diff", ascending=False).reset_index(drop=True)
    both = df.dropna(subset=["paper diff"])
    rho = spearman(both["diff"], both["paper diff"], n_boot=n_boot, n_perm=n_boot, seed=seed)
    stats = {
        "layer": layer, "n_emotions": len(ro.emotions), "n_with_paper": int(len(both)),
        "n_prompts": {k: int((kinds == k).sum()) for k in ("challenging", "neutral")},
        "spearman_with_paper": rho.as_dict(),
        "r_base_instruct_neutral": pearson(mean[("base", "neutral")], mean[("instruct", "neutral")], n_boot=0,
                                           n_perm=0).r,
        "r_base_instruct_challenging": pearson(mean[("base", "challenging")], mean[("instruct", "challenging")],
                                               n_boot=0, n_perm=0).r,
        "r_change_across_prompt_types": pearson(diff["challenging"], diff["neutral"], n_boot=0, n_perm=0).r,
        "mean_abs_diff": float(np.abs(diff["challenging"]).mean()),
        "top_up": list(df["emotion"][:8]), "top_down": list(df["emotion"][::-1][:8]),
        "paper": PAPER, "names": ro.names,
    }
    by_layer = []
    for i, L in enumerate(ro.layers):
        d = ro.cos["instruct"][kinds == "challenging", i].mean(0) - ro.cos["base"][kinds == "challenging", i].mean(0)
        ok = [j for j, e in enumerate(ro.emotions) if e in table]
        r = spearman(d[ok], [table[ro.emotions[j]]["diff"] for j in ok], n_boot=0, n_perm=0).r if len(ok) > 3 else None
        by_layer.append({"layer": L, "mean_abs_diff": float(np.abs(d).mean()), "spearman_with_paper": r})
    stats["by_layer"] = by_layer
    return df, stats


def figure(df, stats: dict[str, Any]):
    """Left: our post-minus-base shift per emotion against the paper's; right: its size and its rank
    correlation with the paper across layers."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    both = df.dropna(subset=["paper diff"])
    sns.regplot(data=both, x="paper diff", y="diff", ax=axes[0], scatter_kws={"s": 10, "alpha": 0.6})
    for _, row in both.iterrows():
        if row["emotion"] in stats["top_up"][:4] + stats["top_down"][:4]:
            axes[0].annotate(row["emotion"], (row["paper diff"], row["diff"]), fontsize=7)
    rho = stats["spearman_with_paper"]
    axes[0].set_title(f"Post minus base per emotion, block {stats['layer']}: Spearman {rho['r']:.2f} "
                      f"[{rho['ci_low']:.2f}, {rho['ci_high']:.2f}], p = {rho['p_perm']:.2g}", fontsize=8.5)
    axes[0].set_xlabel("paper (Table 16, Sonnet 4.5)")
    axes[0].set_ylabel("ours (instruct minus base)")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].axvline(0, color="grey", lw=0.5)
    bl = stats["by_layer"]
    ax = axes[1]
    ax.plot([r["layer"] for r in bl], [r["mean_abs_diff"] for r in bl], "o-", color="tab:purple", label="mean |shift|")
    ax.set_xlabel("block")
    ax.set_ylabel("mean |instruct - base| cosine")
    ax2 = ax.twinx()
    ax2.plot([r["layer"] for r in bl], [r["spearman_with_paper"] for r in bl], "s--", color="tab:green",
             label="Spearman with paper")
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set_ylim(-1, 1)
    ax2.set_ylabel("Spearman with paper")
    ax.set_title("Across layers (paper Fig. 84: the shift grows to mid-late layers)", fontsize=8.5)
    fig.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig, {"stats": stats, "rows": df.to_dict("records")}


def valence_in_pcs(models: dict[str, Any], tokenizer, records: Sequence[dict[str, Any]], ratings: dict[str, np.ndarray],
               emotions: Sequence[str], layers: Sequence[int], start: int = 50, batch_size: int = 8,
               max_length: int = 1024, n_pcs: int = 3) -> dict[str, Any]:
    """For each model: raw story vectors from ``records`` (a subset of the corpus, the same for both), and
    per layer the |r| of PC1..PC``n_pcs`` with each rating (aligned to ``emotions``)."""
    from emolib.study.valence_map import rating_map

    texts = [r["text"] for r in records]
    labels = [r["emotion"] for r in records]
    out: dict[str, Any] = {"layers": list(layers), "n_stories": len(records), "models": {}}
    for k, m in models.items():
        pooled = pooled_means(m, tokenizer, texts, layers=layers, start=start, batch_size=batch_size,
                              max_length=max_length, progress=True, desc=f"{k} stories")
        v = compute_vectors(pooled.means, labels, list(layers), pooled.residual_norms, emotions=emotions)
        rmap = rating_map(v, ratings, n_pcs=n_pcs)
        out["models"][k] = {name: np.asarray(rmap["abs_r"][name]) for name in ratings}
    return out


def valence_figure(vp: dict[str, Any], names: dict[str, str]):
    """|r| of each PC with valence (and arousal) by layer, one panel per model; ``(None, None)`` when ``vp``
    is None (no human ratings installed), which :meth:`Stage.show` reports instead of drawing."""
    import matplotlib.pyplot as plt

    if vp is None:
        return None, None

    models = list(vp["models"])
    dims = list(next(iter(vp["models"].values())))
    fig, axes = plt.subplots(len(dims), len(models), figsize=(5.2 * len(models), 2.8 * len(dims)), squeeze=False,
                             sharey=True)
    for j, k in enumerate(models):
        for i, dim in enumerate(dims):
            a = vp["models"][k][dim]
            for pc in range(a.shape[1]):
                axes[i, j].plot(vp["layers"], a[:, pc], marker=".", label=f"PC{pc + 1}")
            axes[i, j].set_title(f"{k} ({names.get(k, k)}): {dim}", fontsize=8.5)
            axes[i, j].set_ylim(0, 1)
            axes[i, j].set_xlabel("block")
            axes[i, j].set_ylabel("|r| with rating")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Where valence and arousal sit in each model's story-vector PCs ({vp['n_stories']} stories, raw vectors)",
                 fontsize=9.5)
    fig.tight_layout()
    return fig, {"layers": vp["layers"], "models": {k: {d: v.tolist() for d, v in m.items()}
                                                   for k, m in vp["models"].items()}}


def story_subset(records: Sequence[dict[str, Any]], per_emotion: int, seed: int = 0) -> list[dict[str, Any]]:
    """``per_emotion`` stories of each emotion, drawn with a seed (the same draw for both models)."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["emotion"], []).append(r)
    out = []
    for e in sorted(by):
        rs = by[e]
        pick = rng.choice(len(rs), size=min(per_emotion, len(rs)), replace=False)
        out += [rs[i] for i in sorted(pick)]
    return out


def run_pair(stage, vectors: EmotionVectors, base_spec: str, per_emotion: int, norms=None, n_boot: int = 2000,
             seed: int = 0):
    """Stage 04's comparison: load ``base_spec`` beside the run's model, read the prompts with both, compare at
    the vectors' layer, and ask where valence sits in each model's PCs (``norms``: human ratings with
    ``values(words, dimension)``, or None to skip that part). Returns ``(names, table, stats, valence map)``."""
    from emolib.models import load_model
    from emolib.study.corpus import load_corpus

    inst, tok, info = stage.model()
    p = stage.params
    base, btok, binfo = load_model(base_spec, device=p.get("device"), dtype=p.get("dtype"))
    pr = prompts()
    check_same_tokenizer(tok, btok, pr["challenging"] + pr["neutral"])
    if binfo.n_layers != info.n_layers or binfo.width != info.width:
        raise ValueError(f"{base_spec} has {binfo.n_layers} blocks of width {binfo.width}; the run's model "
                         f"{info.name} has {info.n_layers} of width {info.width}: not a base/instruct pair.")
    names = {"base": binfo.name, "instruct": info.name}
    models = {"base": base, "instruct": inst}
    ro = read_pair(models, tok, vectors, names=names)
    layer = stage.layer(vectors)
    table, stats = compare(ro, layer, n_boot=n_boot, seed=seed)
    vp = None
    if norms is not None:
        emos = list(vectors.emotions)
        records = story_subset([r for r in load_corpus("reference") if r["emotion"] in set(emos)], per_emotion, seed)
        ratings = {"valence": norms.values(emos, "valence"), "arousal": norms.values(emos, "arousal")}
        vp = valence_in_pcs(models, tok, records, ratings, emos, list(vectors.layers),
                            start=int(vectors.meta.get("start", 50)), max_length=int(vectors.meta.get("max_length", 1024)))
    del base
    return names, table, stats, vp


def rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 04's headline rows for the base-vs-instruct comparison."""
    rho = stats["spearman_with_paper"]
    pair = f"{stats['names']['base']} -> {stats['names']['instruct']}"
    return [
        {"key": "post_training_spearman", "label": "post-minus-base per emotion vs the paper's Table 16 (Spearman)",
         "ours": rho["r"], "paper": None,
         "note": f"{pair}; 95% CI [{rho['ci_low']:.2f}, {rho['ci_high']:.2f}], p = {rho['p_perm']:.2g}, "
                 f"n = {rho['n']}; block {stats['layer']}"},
        {"key": "post_training_r_neutral", "label": "base vs instruct profile r, neutral prompts",
         "ours": stats["r_base_instruct_neutral"], "paper": PAPER["r_neutral"], "note": pair},
        {"key": "post_training_r_challenging", "label": "base vs instruct profile r, challenging prompts",
         "ours": stats["r_base_instruct_challenging"], "paper": PAPER["r_challenging"], "note": pair},
        {"key": "post_training_r_change", "label": "change vectors of the two prompt types, r",
         "ours": stats["r_change_across_prompt_types"], "paper": PAPER["r_change"],
         "note": f"largest rises: {', '.join(stats['top_up'][:4])}; falls: {', '.join(stats['top_down'][:4])}"},
    ]
