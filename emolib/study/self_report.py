"""Self-report under steering: does adding an emotion vector make the model *say* it feels better or
worse, calmer or more stirred, graded by that emotion's human valence and arousal? (Issue 22.)

The paper's causal read-outs ask for the exact word ("He feels ___" among 12) or for pairwise
preferences; a 135M model does not resolve that grain. This read-out is coarser and matches what a
small model can show: after a neutral question and an assistant prefill ("I feel", "Right now I'm",
"She feels"...), the **valence log-odds** is

    log sum_{w in pleasant} P(w) - log sum_{w in unpleasant} P(w)

over our word lists (``data/self_report.json``; each word's probability is the product of its
tokens' probabilities as the continuation), and the **arousal log-odds** the same with high- and
low-arousal words. Steering is applied, as in the paper's "He feels" experiment, to the assistant
turn up to and including the prefill. The *shift* is steered minus unsteered, averaged over the
prompts.

Controls, at the same strength, layer and positions: random unit directions (isotropic), and
vectors built from the same stories with the emotion labels shuffled (directions of the same kind
as the real ones, but with no emotion in them). Statistics: Pearson r of the shift with the steered
emotion's human rating (bootstrap CI, permutation p) over the rated emotions, and the fraction of
emotions whose shift lies beyond every random direction's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from emolib.chat import ChatPrompt, build_prompt, continuation_ids
from emolib.steering import Steering
from emolib.study.controls import RandomSpread, random_directions
from emolib.study.scoring import conditions_logprobs


@cache
def word_lists() -> dict[str, Any]:
    """The valence and arousal word lists and the prompts (package data)."""
    return json.loads(resources.files("emolib.data").joinpath("self_report.json").read_text(encoding="utf-8"))


@dataclass
class Readout:
    """The prompts, their steering spans, and every list word's token ids after each prompt."""

    prompts: list[ChatPrompt]
    ids: list[str]
    person: list[str]
    spans: list[tuple[int, int]]
    words: list[str]
    word_ids: list[list[list[int]]]  # [prompt][word] -> token ids
    sets: dict[str, tuple[list[int], list[int]]]  # "valence" -> (indices of the + words, of the - words)


def make_readout(tokenizer, prompt_ids: Sequence[str] | None = None) -> Readout:
    """Render the prompts (all by default) and tokenise every list word after each."""
    spec = word_lists()
    chosen = [p for p in spec["prompts"] if prompt_ids is None or p["id"] in set(prompt_ids)]
    if not chosen:
        raise ValueError(f"No self-report prompt among {prompt_ids}; known: {[p['id'] for p in spec['prompts']]}")
    words = list(dict.fromkeys(spec["valence"]["pleasant"] + spec["valence"]["unpleasant"] + spec["arousal"]["high"]
                               + spec["arousal"]["low"]))
    pos = {w: i for i, w in enumerate(words)}
    sets = {"valence": ([pos[w] for w in spec["valence"]["pleasant"]], [pos[w] for w in spec["valence"]["unpleasant"]]),
            "arousal": ([pos[w] for w in spec["arousal"]["high"]], [pos[w] for w in spec["arousal"]["low"]])}
    prompts, spans, wids = [], [], []
    for p in chosen:
        cp = build_prompt(tokenizer, p["user"], p["prefill"])
        prompts.append(cp)
        spans.append((cp.spans["assistant"][0], len(cp.ids)))
        wids.append([continuation_ids(tokenizer, cp, " " + w) for w in words])
    return Readout(prompts=prompts, ids=[p["id"] for p in chosen], person=[p["person"] for p in chosen], spans=spans,
                   words=words, word_ids=wids, sets=sets)


def word_logprobs_many(model, ro: Readout, steerings: Sequence[Steering | None], rows: int = 64) -> np.ndarray:
    """``[steerings, prompts, words]`` log-probabilities of every list word after every prompt, under each
    steering (None: unsteered), the steering on each prompt's span.

    A word of several tokens counts with its full probability (its tokens' log-probs summed). All
    conditions of a prompt share one pass over the unsteered prefix and run side by side, ``rows``
    per batch (:func:`emolib.study.scoring.conditions_logprobs`).
    """
    out = np.zeros((len(steerings), len(ro.prompts), len(ro.words)))
    for i, prompt in enumerate(ro.prompts):
        out[:, i] = conditions_logprobs(model, prompt.ids, ro.spans[i], steerings, ro.word_ids[i], rows).numpy()
    return out


def word_logprobs(model, tokenizer, ro: Readout, steering: Steering | None, rows: int = 64) -> np.ndarray:
    """``[prompts, words]`` log-probabilities of every list word after every prompt, under one ``steering``."""
    return word_logprobs_many(model, ro, [steering], rows)[0]


def log_odds(lp: np.ndarray, plus: Sequence[int], minus: Sequence[int]) -> np.ndarray:
    """``log sum P(plus) - log sum P(minus)`` per prompt, from ``[prompts, words]`` log-probs."""
    from scipy.special import logsumexp

    return logsumexp(lp[:, list(plus)], axis=1) - logsumexp(lp[:, list(minus)], axis=1)


def shifts(model, tokenizer, ro: Readout, steerings: Sequence[Steering], baseline: np.ndarray | None = None,
           rows: int = 64) -> dict[str, np.ndarray]:
    """Per steering, the valence and arousal log-odds shift per prompt: ``{"valence": [S, P], "arousal": [S, P]}``.

    ``baseline`` (``[prompts, words]`` from :func:`word_logprobs` with no steering) is computed when
    not given; it must come from the same batched path as the steered conditions, so a zero
    strength gives a zero shift up to rounding (batches of another size round differently)."""
    base = word_logprobs(model, tokenizer, ro, None, rows) if baseline is None else baseline
    lp = word_logprobs_many(model, ro, steerings, rows)
    return {k: log_odds(lp.reshape(-1, lp.shape[-1]), *ro.sets[k]).reshape(lp.shape[:2]) - log_odds(base, *ro.sets[k])
            for k in ro.sets}


def shuffled_label_directions(x: torch.Tensor, labels: Sequence[str], n: int, pca=None, layer: int | None = None,
                              threshold: float | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` directions built like emotion vectors from the same stories with their labels shuffled:
    the means of random groups of stories, minus their grand mean, denoised the same way."""
    from emolib.vectors import emotion_means, grand_mean_center, project_out

    x = torch.as_tensor(x).float()
    ok = ~torch.isnan(x).any(dim=1)
    x = x[ok]
    lab = np.asarray(labels)[ok.numpy()]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(lab)
    v, _ = grand_mean_center(emotion_means(x, shuffled.tolist())[0])
    if pca is not None:
        v = project_out(v, pca.basis(layer, threshold))
    pick = rng.choice(v.shape[0], size=min(n, v.shape[0]), replace=False)
    return v[pick]


@dataclass
class SelfReport:
    """Self-report shifts for every steered emotion and the controls, at several strengths."""

    emotions: list[str]
    strengths: list[float]  # multiples of the usable window
    window: float
    layer: int
    prompts: list[str]
    person: list[str]
    valence: dict[str, np.ndarray]  # str(multiple) -> [emotions, prompts]
    arousal: dict[str, np.ndarray]
    random_valence: dict[str, np.ndarray]  # str(multiple) -> [n_random, prompts]
    random_arousal: dict[str, np.ndarray]
    shuffled_valence: dict[str, np.ndarray]
    shuffled_arousal: dict[str, np.ndarray]
    stats: dict[str, Any] = field(default_factory=dict)

    def mean(self, what: str, m: float, kind: str = "emotion") -> np.ndarray:
        table = {"emotion": {"valence": self.valence, "arousal": self.arousal},
                 "random": {"valence": self.random_valence, "arousal": self.random_arousal},
                 "shuffled": {"valence": self.shuffled_valence, "arousal": self.shuffled_arousal}}[kind][what]
        return np.asarray(table[str(m)]).mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("valence", "arousal", "random_valence", "random_arousal", "shuffled_valence", "shuffled_arousal"):
            d[k] = {m: np.asarray(v).round(4).tolist() for m, v in d[k].items()}
        return d


def run_self_report(model, tokenizer, vectors, emotions: Sequence[str], window: float, multiples: Sequence[float],
                    layer: int, n_random: int = 20, shuffled: torch.Tensor | None = None, seed: int = 0,
                    rows: int = 64, prompt_ids: Sequence[str] | None = None) -> SelfReport:
    """Shifts for each emotion vector, ``n_random`` random directions and the ``shuffled`` label-shuffled
    directions, at ``multiples`` x ``window`` (x the mean residual norm) at ``layer``; ``rows`` conditions
    run side by side in one forward pass."""
    ro = make_readout(tokenizer, prompt_ids)
    base = word_logprobs(model, tokenizer, ro, None, rows)
    rand = random_directions(vectors.width, n_random, seed + 7)
    res = {k: {} for k in ("valence", "arousal", "random_valence", "random_arousal", "shuffled_valence",
                           "shuffled_arousal")}
    for m in multiples:
        s = float(m) * window
        st = [vectors.steering(e, s, layers=layer) for e in emotions]
        sh = shifts(model, tokenizer, ro, st, base, rows)
        res["valence"][str(m)], res["arousal"][str(m)] = sh["valence"], sh["arousal"]
        sr = shifts(model, tokenizer, ro, [vectors.steering(r, s, layers=layer, label="random") for r in rand], base,
                    rows)
        res["random_valence"][str(m)], res["random_arousal"][str(m)] = sr["valence"], sr["arousal"]
        if shuffled is not None and len(shuffled):
            ss = shifts(model, tokenizer, ro, [vectors.steering(d, s, layers=layer, label="shuffled") for d in shuffled],
                        base, rows)
            res["shuffled_valence"][str(m)], res["shuffled_arousal"][str(m)] = ss["valence"], ss["arousal"]
    return SelfReport(emotions=list(emotions), strengths=[float(m) for m in multiples], window=float(window),
                      layer=int(layer), prompts=ro.ids, person=ro.person, **res)


def statistics(rep: SelfReport, ratings: dict[str, np.ndarray], n_boot: int = 2000, n_perm: int = 2000,
               seed: int = 0) -> dict[str, Any]:
    """Per strength and read-out: r(shift, human rating) with CI and permutation p; the fraction of
    emotions beyond every random direction; the same r for the label-shuffled directions is not
    defined (they have no emotion), so their shifts give a second null range."""
    from emolib.stats import pearson

    out: dict[str, Any] = {}
    for m in rep.strengths:
        for what, rating_key in (("valence", "valence"), ("arousal", "arousal")):
            shift = rep.mean(what, m)
            rnd = RandomSpread.of(rep.mean(what, m, "random"))
            shuf = RandomSpread.of(rep.mean(what, m, "shuffled")) if rep.shuffled_valence else None
            y = ratings.get(rating_key)
            corr = pearson(shift, y, n_boot=n_boot, n_perm=n_perm, seed=seed) if y is not None else None
            beyond = [e for e, v in zip(rep.emotions, shift) if rnd.exceeded_by(float(v))]
            beyond_shuf = [e for e, v in zip(rep.emotions, shift) if shuf.exceeded_by(float(v))] if shuf else []
            key = f"{what}@{m:g}"
            out[key] = {"multiple": m, "strength": m * rep.window, "readout": what,
                        "r": corr.as_dict() if corr else None,
                        "beyond_random": len(beyond), "beyond_random_share": len(beyond) / max(len(shift), 1),
                        "beyond_random_emotions": beyond, "random": rnd.to_dict(),
                        "shuffled": shuf.to_dict() if shuf else None,
                        "beyond_shuffled": len(beyond_shuf) if shuf else None,
                        "shift_range": [float(np.min(shift)), float(np.max(shift))]}
    return out


def dose_response(model, tokenizer, vectors, emotions: Sequence[str], window: float, multiples: Sequence[float],
                  layer: int, rows: int = 64, prompt_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Valence and arousal shift of each emotion at each strength (the working 12's dose-response curves)."""
    ro = make_readout(tokenizer, prompt_ids)
    base = word_logprobs(model, tokenizer, ro, None, rows)
    curves = {"valence": np.zeros((len(emotions), len(multiples))), "arousal": np.zeros((len(emotions), len(multiples)))}
    for j, m in enumerate(multiples):
        if m == 0:
            continue
        sh = shifts(model, tokenizer, ro, [vectors.steering(e, m * window, layers=layer) for e in emotions], base,
                    rows)
        for k in curves:
            curves[k][:, j] = sh[k].mean(axis=1)
    return {"emotions": list(emotions), "multiples": [float(m) for m in multiples], "window": window, "layer": layer,
            "valence": curves["valence"].tolist(), "arousal": curves["arousal"].tolist()}


def layer_check(model, tokenizer, vectors, emotions: Sequence[str], window: float, multiple: float,
                layers: Sequence[int], ratings: dict[str, np.ndarray], n_random: int = 10, seed: int = 0,
                rows: int = 64, prompt_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """r(valence shift, human valence) and r(arousal shift, human arousal) at several layers (one strength).

    The window was measured at the default layer; at other layers the same multiple of each layer's
    own mean residual norm is used."""
    from emolib.stats import pearson

    ro = make_readout(tokenizer, prompt_ids)
    base = word_logprobs(model, tokenizer, ro, None, rows)
    rand = random_directions(vectors.width, n_random, seed + 11)
    out = {}
    for layer in layers:
        s = multiple * window
        sh = shifts(model, tokenizer, ro, [vectors.steering(e, s, layers=layer) for e in emotions], base, rows)
        rr = shifts(model, tokenizer, ro, [vectors.steering(r, s, layers=layer, label="random") for r in rand], base,
                    rows)
        row = {}
        for k in ("valence", "arousal"):
            shift = sh[k].mean(axis=1)
            c = pearson(shift, ratings[k], n_boot=500, n_perm=500, seed=seed) if k in ratings else None
            spread = RandomSpread.of(rr[k].mean(axis=1))
            row[k] = {"r": c.as_dict() if c else None, "beyond_random_share":
                      float(np.mean([spread.exceeded_by(float(v)) for v in shift])), "random": spread.to_dict()}
        out[int(layer)] = row
    return {"multiple": multiple, "layers": [int(x) for x in layers], "by_layer": out}


# ---- figures -------------------------------------------------------------------------------------


def scatter_figure(rep: SelfReport, ratings: dict[str, np.ndarray], stats: dict[str, Any], m: float):
    """Each emotion's shift against its human rating (valence, arousal), with the random band."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    for ax, what in zip(axes, ("valence", "arousal")):
        shift, y = rep.mean(what, m), ratings.get(what)
        if y is None:
            ax.set_visible(False)
            continue
        ok = np.isfinite(y)
        st = stats[f"{what}@{m:g}"]
        ax.axvspan(st["random"]["lo"], st["random"]["hi"], color="grey", alpha=0.2,
                   label=f"range of {st['random']['n']} random directions")
        if st["shuffled"]:
            ax.axvline(st["shuffled"]["lo"], color="tab:purple", ls=":", lw=1)
            ax.axvline(st["shuffled"]["hi"], color="tab:purple", ls=":", lw=1, label="range of label-shuffled vectors")
        sns.regplot(x=shift[ok], y=y[ok], ax=ax, scatter_kws={"s": 10}, line_kws={"color": "C3", "lw": 1}, n_boot=500,
                    seed=0)
        for xi, yi, w in zip(shift[ok], y[ok], [e for e, k in zip(rep.emotions, ok) if k]):
            ax.annotate(w, (xi, yi), fontsize=5.5, xytext=(1.5, 1), textcoords="offset points", alpha=0.8)
        r = st["r"]
        ax.set(xlabel=f"{what} log-odds shift of the self-report (nats)", ylabel=f"human {what} of the steered emotion",
               title=f"{what}: r = {r['r']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], n = {r['n']}; "
                     f"{st['beyond_random']}/{len(shift)} beyond every random direction")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Steering with each emotion vector at {m:g} x window ({m * rep.window:.2f} x norm), block {rep.layer}")
    fig.tight_layout()
    return fig, {"multiple": m, "emotions": rep.emotions, "valence_shift": rep.mean("valence", m),
                 "arousal_shift": rep.mean("arousal", m), "stats": {k: v for k, v in stats.items() if k.endswith(f"@{m:g}")}}


def dose_figure(dose: dict[str, Any], rep: SelfReport | None = None):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
    ms = dose["multiples"]
    for ax, what in zip(axes, ("valence", "arousal")):
        for e, row in zip(dose["emotions"], dose[what]):
            ax.plot(ms, row, "o-", ms=3, label=e)
        if rep is not None:
            for m in rep.strengths:
                spread = RandomSpread.of(rep.mean(what, m, "random"))
                ax.vlines(m, spread.lo, spread.hi, color="grey", lw=6, alpha=0.35)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="strength (x usable window)", ylabel=f"{what} log-odds shift (nats)",
               title=f"{what}: dose-response of the working 12 (grey bars: random range)")
    axes[1].legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig, dose


def layer_figure(check: dict[str, Any], default: int):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    layers = check["layers"]
    for what, c in (("valence", "tab:red"), ("arousal", "tab:blue")):
        rs = [check["by_layer"][k][what]["r"] for k in layers]
        ax.errorbar(layers, [r["r"] for r in rs], yerr=[[r["r"] - r["ci_low"] for r in rs],
                                                        [r["ci_high"] - r["r"] for r in rs]],
                    fmt="o-", ms=4, capsize=2, color=c, label=f"r(shift, human {what})")
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(default, color="k", lw=0.8, ls="--", label=f"default layer ({default})")
    ax.set(xlabel="steered block", ylabel="Pearson r (95 % CI)", ylim=(-1, 1),
           title=f"Self-report shift vs human rating, by layer (x{check['multiple']:g} window)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, check


def rows(stats: dict[str, Any], dose: dict[str, Any] | None, layers: dict[str, Any] | None,
         default_multiple: float) -> list[dict[str, Any]]:
    """Metric rows: r with CI and n per read-out and strength, and the share beyond every random direction."""
    out = []
    for st in stats.values():
        r = st["r"]
        what, m = st["readout"], st["multiple"]
        if r is not None:
            out.append({"key": f"selfreport_{what}_r_x{m:g}", "label": f"r(self-report {what} shift, human {what}), "
                        f"{m:g} x window", "ours": r["r"], "paper": "graded (steering raises matching self-reports)",
                        "note": f"95% CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], permutation p = {r['p_perm']:.3g}, "
                                f"n = {r['n']}; strength {st['strength']:.3f} x norm"})
        out.append({"key": f"selfreport_{what}_beyond_random_x{m:g}", "label": f"emotions whose {what} shift is beyond "
                    f"every random direction, {m:g} x window", "ours": st["beyond_random_share"], "paper": None,
                    "note": f"{st['beyond_random']} emotions; random range [{st['random']['lo']:+.2f}, "
                            f"{st['random']['hi']:+.2f}] nats over {st['random']['n']} directions"
                            + (f"; beyond every label-shuffled vector: {st['beyond_shuffled']} (range "
                               f"[{st['shuffled']['lo']:+.2f}, {st['shuffled']['hi']:+.2f}])"
                               if st.get("beyond_shuffled") is not None else "")})
    if layers:
        for layer, row in layers["by_layer"].items():
            r = row["valence"]["r"]
            if r is not None:
                out.append({"key": f"selfreport_valence_r_block{layer}", "label": f"r(valence shift, human valence) at "
                            f"block {layer}", "ours": r["r"], "paper": None,
                            "note": f"95% CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], n = {r['n']}, "
                                    f"x{layers['multiple']:g} window"})
    return out


# ---- "He feels" at the grain of the paper's clusters ---------------------------------------------


def cluster_feelings(model, tokenizer, vectors, strength: float, layer: int, n_random: int = 20, seed: int = 0,
                     rows: int = 64, user: str = "How does he feel?", prefill: str = "He feels") -> dict[str, Any]:
    """A 10 x 10 matrix: steering with each paper cluster's direction (the normalised mean of its members'
    unit vectors) against the log-probability mass of each cluster's emotion words after "He feels".

    Rows and columns are the paper's clusters (Table 12) that the vectors cover; entry ``[i, j]`` is
    the change in ``log sum_{w in cluster j} P(w)`` when steering toward cluster ``i``. A diagonal
    *win* is a column whose largest increase comes from its own cluster (word frequency cancels
    within a column); the floor is what the best of ``n_random`` random directions does to each column.
    """
    from scipy.special import logsumexp

    from emolib.emotions import paper_clusters

    clusters = {c: [e for e in members if e in vectors.emotions] for c, members in paper_clusters().items()}
    clusters = {c: m for c, m in clusters.items() if m}
    names = list(clusters)
    words = [e for c in names for e in clusters[c]]
    col = {c: [words.index(e) for e in clusters[c]] for c in names}
    prompt = build_prompt(tokenizer, user, prefill)
    span = (prompt.spans["assistant"][0], len(prompt.ids))
    conts = [continuation_ids(tokenizer, prompt, " " + w) for w in words]
    ro = Readout(prompts=[prompt], ids=["he_feels"], person=["third"], spans=[span], words=words, word_ids=[conts],
                 sets={})

    def masses(steerings):  # [conditions, clusters]
        lp = word_logprobs_many(model, ro, steerings, rows)[:, 0]
        return np.stack([logsumexp(lp[:, col[c]], axis=1) for c in names], axis=1)

    dirs = []
    for c in names:
        u = torch.stack([vectors.vector(e, layer) / vectors.vector(e, layer).norm() for e in clusters[c]]).mean(0)
        dirs.append(u)
    rand = random_directions(vectors.width, n_random, seed + 3)
    conds = ([None] + [vectors.steering(d, strength, layers=layer, label=c) for d, c in zip(dirs, names)]
             + [vectors.steering(r, strength, layers=layer, label="random") for r in rand])
    m = masses(conds)
    base, delta, rdelta = m[0], m[1:1 + len(names)] - m[0], m[1 + len(names):] - m[0]
    wins = [c for j, c in enumerate(names) if int(np.argmax(delta[:, j])) == j]
    beats = [c for j, c in enumerate(names) if delta[j, j] > rdelta[:, j].max()]
    return {"clusters": names, "sizes": [len(clusters[c]) for c in names], "strength": strength, "layer": layer,
            "delta": delta.tolist(), "random_delta": rdelta.tolist(), "base": base.tolist(),
            "diagonal_wins": len(wins), "win_clusters": wins, "beats_random": len(beats), "beats_random_clusters": beats,
            "chance_wins": len(names) * (1 / len(names))}


def cluster_figure(res: dict[str, Any]):
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = np.asarray(res["delta"])
    lim = float(np.abs(d).max()) or 1.0
    fig, ax = plt.subplots(figsize=(8.5, 7))
    short = [c.replace(" and ", " & ") for c in res["clusters"]]
    sns.heatmap(d, ax=ax, cmap="RdBu_r", vmin=-lim, vmax=lim, annot=True, fmt=".2f", annot_kws={"size": 7},
                xticklabels=short, yticklabels=short, cbar_kws={"label": "change in log P(cluster's words)"})
    for j in range(len(short)):
        ax.add_patch(plt.Rectangle((j, j), 1, 1, fill=False, ec="k", lw=1.2))
    ax.set(xlabel="words of cluster", ylabel="steered toward cluster",
           title=f"'He feels': cluster-level read-out, {res['diagonal_wins']}/{len(short)} diagonal wins; "
                 f"{res['beats_random']} beat every random direction ({res['strength']:.2f} x norm, block {res['layer']})")
    ax.tick_params(axis="x", rotation=45)
    plt.setp(ax.get_xticklabels(), ha="right")
    fig.tight_layout()
    return fig, res


# ---- choices at the same grain: pleasant vs aversive activities ------------------------------------

PLEASANT_CATEGORIES = ("Helpful", "Engaging", "Social", "Self-curiosity")
AVERSIVE_CATEGORIES = ("Aversive", "Misaligned", "Unsafe")


def choice_items(tokenizer, n_pairs: int = 8, seed: int = 0):
    """``n_pairs`` pleasant-vs-aversive activity pairs (both orders), and for each item which letter is pleasant."""
    from emolib.study.preferences import load_activities, pair_items

    acts = load_activities()
    good = [i for i, a in enumerate(acts) if a["category"] in PLEASANT_CATEGORIES]
    bad = [i for i, a in enumerate(acts) if a["category"] in AVERSIVE_CATEGORIES]
    rng = np.random.default_rng(seed)
    pairs = [(int(g), int(b)) for g, b in zip(rng.choice(good, n_pairs, replace=False), rng.choice(bad, n_pairs, replace=False))]
    items = pair_items(tokenizer, [a["text"] for a in acts], pairs, both_orders=True)
    pleasant_first = np.array([it.first in set(good) for it in items])
    return items, pleasant_first


def p_pleasant_many(model, items, pleasant_first: np.ndarray, steerings: Sequence[Steering | None],
                    rows: int = 64) -> np.ndarray:
    """``[steerings]``: mean probability of choosing the pleasant activity under each steering (None:
    unsteered), the steering on the assistant turn (the decision); all conditions of an item side by side."""
    from emolib.study.scoring import option_probs

    p_first = np.zeros((len(steerings), len(items)))
    for k, it in enumerate(items):
        span = (it.prompt.spans["assistant"][0], len(it.prompt.ids))
        lp = conditions_logprobs(model, it.prompt.ids, span, steerings, [[t] for t in it.token_ids], rows)
        p_first[:, k] = option_probs(lp)[0][:, 0].numpy()
    return np.where(pleasant_first, p_first, 1 - p_first).mean(axis=1)


def valence_choice(model, tokenizer, vectors, emotions: Sequence[str], ratings: np.ndarray, strength: float,
                   layer: int, n_pairs: int = 8, n_random: int = 20, n_boot: int = 2000, seed: int = 0,
                   rows: int = 64) -> dict[str, Any]:
    """Does steering toward an emotion move P(choose the pleasant activity) with that emotion's valence?

    The slope of the change in P(pleasant) on human valence across emotions (least squares, with a
    bootstrap CI over emotions), beside the spread of the change under random directions.
    """
    items, pf = choice_items(tokenizer, n_pairs, seed)
    rand = random_directions(vectors.width, n_random, seed + 5)
    conds = ([None] + [vectors.steering(e, strength, layers=layer) for e in emotions]
             + [vectors.steering(r, strength, layers=layer, label="random") for r in rand])
    p = p_pleasant_many(model, items, pf, conds, rows)
    base, d, rd = float(p[0]), p[1:1 + len(emotions)] - p[0], p[1 + len(emotions):] - p[0]
    y = np.asarray(ratings, float)
    ok = np.isfinite(y)
    slope = float(np.polyfit(y[ok], d[ok], 1)[0])
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(ok)
    boots = [np.polyfit(y[s], d[s], 1)[0] for s in (rng.choice(idx, len(idx)) for _ in range(n_boot))
             if np.ptp(y[s]) > 0]
    spread = RandomSpread.of(rd)
    return {"emotions": list(emotions), "delta": d.tolist(), "valence": y.tolist(), "base_p_pleasant": base,
            "slope_per_valence_point": slope, "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "n": int(ok.sum()), "random_delta": rd.tolist(), "random": spread.to_dict(),
            "beyond_random": int(sum(spread.exceeded_by(float(v)) for v in d)), "n_items": len(items),
            "strength": strength, "layer": layer}


def choice_figure(res: dict[str, Any]):
    import matplotlib.pyplot as plt
    import seaborn as sns

    y, d = np.asarray(res["valence"], float), np.asarray(res["delta"], float)
    ok = np.isfinite(y)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhspan(res["random"]["lo"], res["random"]["hi"], color="grey", alpha=0.2, label="random directions' range")
    sns.regplot(x=y[ok], y=d[ok], ax=ax, scatter_kws={"s": 10}, line_kws={"color": "C3"}, n_boot=500, seed=0)
    ax.set(xlabel="human valence of the steered emotion", ylabel="change in P(choose the pleasant activity)",
           title=f"Choices: slope {res['slope_per_valence_point']:+.4f} per valence point "
                 f"[{res['ci95'][0]:+.4f}, {res['ci95'][1]:+.4f}], n = {res['n']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, res
