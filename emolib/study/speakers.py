"""Present speaker vs other speaker: emotion probes from two-speaker dialogues (the paper's
section on present-speaker and other-speaker representations).

The data (``emolib/data/dialogues/two_speaker.jsonl``, written by us) are Human/Assistant dialogues in
which each speaker's emotion was assigned independently at random and is shown, never named. Every
dialogue is read once; the block outputs are averaged over the Human-turn tokens and over the
Assistant-turn tokens separately. Grouping the dialogues by either speaker's emotion gives a 2x2 grid
of probe sets:

===========================  =========================  ==========================
tokens averaged              grouped by Human's emotion  grouped by Assistant's
===========================  =========================  ==========================
Human turns                  present (Human)             other (on Human turns)
Assistant turns              other (on Assistant turns)  present (Assistant)
===========================  =========================  ==========================

Each set is centred on its mean over emotions and denoised with the same neutral components as the
story vectors (:func:`emolib.vectors.compute_vectors`). Because the two speakers' emotions are
independent, grouping by one averages the other out; what is left in an "other" probe is what a
speaker's tokens carry about the *other* speaker's feeling. The paper found the present-speaker sets
alike, the other-speaker sets alike, and the two groups nearly orthogonal (its Fig. 18), with
other-speaker probes resembling the present speaker's *reaction* (other-angry nearest to sorry,
guilty, docile; its Table 14), and arousal anti-correlated across speakers (r = -0.47) but not valence
(0.07).

The noise floor of every comparison here is measured, not assumed: label-shuffled probe sets give the
cosine two unrelated sets of the same size reach, and split halves of the dialogues give the ceiling.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolib.chat import dialogue_messages, encode_chat
from emolib.study.geometry import off_diagonal, unit_rows
from emolib.vectors import EmotionVectors, NeutralPCA, compute_vectors

ROLES = ("human", "assistant")
# probe set -> (whose tokens, whose emotion labels the groups)
PROBES: dict[str, tuple[str, str]] = {
    "present: Human": ("human", "human"),
    "present: Assistant": ("assistant", "assistant"),
    "other: on Human turns": ("human", "assistant"),
    "other: on Assistant turns": ("assistant", "human"),
}
PRESENT = ("present: Human", "present: Assistant")
OTHER = ("other: on Human turns", "other: on Assistant turns")
# the paper's Table 14 (nearest present-speaker emotions of three other-speaker probes; cosines where given)
PAPER_TABLE14 = {
    "angry": [("sorry", 0.355), ("guilty", 0.338), ("docile", 0.332)],
    "afraid": [("valiant", None), ("paranoid", None), ("vigilant", None), ("defiant", None)],
    "nervous": [("impatient", None), ("grumpy", None), ("irritated", None)],
}
PAPER_ACROSS = {"arousal": -0.47, "valence": 0.07}


@cache
def _lines(name: str) -> tuple[str, ...]:
    return tuple(resources.files("emolib.data").joinpath("dialogues", name).read_text(encoding="utf-8").splitlines())


def load_dialogues(name: str = "two_speaker.jsonl") -> list[dict[str, Any]]:
    """The records of a dialogue file shipped in ``emolib/data/dialogues``."""
    return [json.loads(line) for line in _lines(name) if line.strip()]


@cache
def probe_texts() -> dict[str, Any]:
    """Reply openers, denials and prompts of our own (``emolib/data/dialogues/probes.json``)."""
    return json.loads(resources.files("emolib.data").joinpath("dialogues", "probes.json").read_text(encoding="utf-8"))


def dataset_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many dialogues, exchanges, and how often each emotion occurs per speaker (the issue's >= 20)."""
    import collections

    turns = [len(dialogue_messages(r["text"])) for r in records]
    per = {role: collections.Counter(r[f"{role}_emotion"] for r in records) for role in ROLES}
    same = sum(r["human_emotion"] == r["assistant_emotion"] for r in records)
    return {"n_dialogues": len(records), "turns_min": min(turns), "turns_max": max(turns),
            "exchanges_min": min(turns) // 2, "exchanges_max": max(turns) // 2,
            "per_speaker_min": {role: min(c.values()) for role, c in per.items()},
            "per_speaker_max": {role: max(c.values()) for role, c in per.items()},
            "emotions": sorted(set(per["human"]) | set(per["assistant"])), "same_emotion": same,
            "topics": len({r.get("topic_id") for r in records})}


def role_masks(tokenizer, text: str, style: str = "auto") -> tuple[list[int], torch.Tensor]:
    """Token ids of a rendered dialogue and a ``[2, n]`` mask of its Human and its Assistant content tokens.

    The dialogue is rendered with the model's chat template (plain ``Human:``/``Assistant:`` turns for a
    model without one), so each speaker's tokens are those the model reads as that role's message;
    template tokens (headers, end-of-turn markers) belong to neither group.
    """
    ct = encode_chat(tokenizer, dialogue_messages(text), add_generation_prompt=False, continue_final_message=False,
                     style=style)
    roles = {"human": "user", "assistant": "assistant"}
    mask = torch.tensor([[c and r == roles[role] for r, c in zip(ct.roles, ct.content)] for role in ROLES])
    return ct.ids, mask


@dataclass
class SpeakerActivations:
    """Per dialogue and speaker, the mean block output at every layer: ``x [n, 2, layers, width]``."""

    x: torch.Tensor
    counts: torch.Tensor
    layers: list[int]
    labels: dict[str, list[str]]  # "human"/"assistant" -> the assigned emotion of each dialogue
    ids: list[str]
    topics: list[Any]


def pool_dialogues(model, tokenizer, records: Sequence[dict[str, Any]], layers: Sequence[int], batch_size: int = 8,
                   cache: str | Path | None = None, model_id: str = "") -> SpeakerActivations:
    """Read every dialogue once and average each speaker's tokens (cached in ``cache`` if given)."""
    from emolib.study.activations import cached_masked_means

    x, counts = cached_masked_means(model, tokenizer, records, lambda r: role_masks(tokenizer, r["text"]), layers,
                                    cache=cache, model_id=model_id, batch_size=batch_size, desc="two-speaker dialogues")
    return SpeakerActivations(x, counts, list(layers), _labels(records), [r["id"] for r in records],
                              [r.get("topic_id") for r in records])


def _labels(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    return {role: [r[f"{role}_emotion"] for r in records] for role in ROLES}


def build_probes(acts: SpeakerActivations, norms: torch.Tensor, pca: NeutralPCA | None, threshold: float,
                 emotions: Sequence[str] | None = None, rows: Sequence[int] | None = None,
                 labels: dict[str, Sequence[str]] | None = None, meta: dict[str, Any] | None = None
                 ) -> dict[str, EmotionVectors]:
    """The four probe sets of the 2x2 grid (optionally from a subset of ``rows`` or with other ``labels``)."""
    rows = list(range(len(acts.ids))) if rows is None else list(rows)
    labels = acts.labels if labels is None else labels
    emotions = list(emotions) if emotions is not None else sorted(set(acts.labels["human"]) | set(acts.labels["assistant"]))
    out = {}
    for name, (tokens, label_role) in PROBES.items():
        x = acts.x[rows, ROLES.index(tokens)]
        lab = [labels[label_role][i] for i in rows]
        m = dict(meta or {}, probe=name, tokens=tokens, grouped_by=label_role)
        out[name] = compute_vectors(x, lab, acts.layers, norms, emotions=emotions, neutral=pca, threshold=threshold,
                                    meta=m)
    return out


def save_probes(probes: dict[str, EmotionVectors], folder: str | Path, default_layer: int | None) -> list[Path]:
    """One self-describing safetensors file per probe set, named after it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, v in probes.items():
        v = v.with_default_layer(default_layer) if default_layer is not None else v
        paths.append(v.save(folder / f"{slug(name)}.safetensors"))
    return paths


def load_probes(folder: str | Path) -> dict[str, EmotionVectors]:
    """The probe sets written by :func:`save_probes`, in the grid's order."""
    folder = Path(folder)
    missing = [n for n in PROBES if not (folder / f"{slug(n)}.safetensors").exists()]
    if missing:
        raise FileNotFoundError(f"No speaker probes {missing} in {folder}: run notebook 02 first.")
    return {n: EmotionVectors.load(folder / f"{slug(n)}.safetensors") for n in PROBES}


def slug(name: str) -> str:
    return name.replace(": ", "_").replace(" ", "_").lower()


# ---- comparisons -------------------------------------------------------------------------------


def set_matrix(sets: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For sets ``name -> [emotions, width]`` over the same emotions: the mean cosine between the two
    sets' vectors of the same emotion (``same``), and the correlation of their emotion-by-emotion cosine
    structures (``structure``: the off-diagonal entries of each set's own cosine matrix)."""
    names = list(sets)
    units = {k: unit_rows(np.asarray(v, dtype=np.float64)) for k, v in sets.items()}
    same = np.zeros((len(names), len(names)))
    struct = np.zeros_like(same)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            same[i, j] = float(np.mean(np.sum(units[a] * units[b], axis=1)))
            ca, cb = off_diagonal(units[a] @ units[a].T), off_diagonal(units[b] @ units[b].T)
            struct[i, j] = float(np.corrcoef(ca, cb)[0, 1]) if len(ca) > 2 else np.nan
    return same, struct


def shared_emotions(probes: dict[str, EmotionVectors], stories: EmotionVectors) -> list[str]:
    """The probes' emotions that the story vectors also have (all 12 unless 02 ran on a subset)."""
    return [e for e in next(iter(probes.values())).emotions if e in set(stories.emotions)]


def probe_sets_at(probes: dict[str, EmotionVectors], stories: EmotionVectors, layer: int) -> dict[str, np.ndarray]:
    """The four probe sets and the story vectors over the emotions they share, at ``layer`` (story vectors
    re-centred on those emotions, like the probes)."""
    emotions = shared_emotions(probes, stories)
    if len(emotions) < 3:
        raise ValueError(f"The story vectors share only {emotions} with the speaker probes; need >= 3 emotions.")
    out = {name: p.select(emotions).at(layer).numpy() for name, p in probes.items()}
    s = stories.select(emotions).at(layer).numpy()
    out["story"] = s - s.mean(0, keepdims=True)
    return out


def shuffled_floor(acts: SpeakerActivations, norms, pca, threshold: float, layer: int, reps: int = 20,
                   seed: int = 0) -> dict[str, float]:
    """Noise floor: the same-emotion cosine between probe sets built with labels permuted at random
    (mean and 95th percentile of |cosine| over ``reps`` shuffles and every pair of sets)."""
    rng = np.random.default_rng(seed)
    vals = []
    real = build_probes(acts, norms, pca, threshold)
    for _ in range(reps):
        perm = {role: list(rng.permutation(acts.labels[role])) for role in ROLES}
        shuf = build_probes(acts, norms, pca, threshold, labels=perm)
        for a in PROBES:
            for b in PROBES:
                u, v = unit_rows(shuf[a].at(layer).numpy()), unit_rows(real[b].at(layer).numpy())
                vals.append(float(np.mean(np.sum(u * v, axis=1))))
    vals = np.abs(np.asarray(vals))
    return {"mean_abs": float(vals.mean()), "p95_abs": float(np.percentile(vals, 95)), "reps": reps}


def split_half(acts: SpeakerActivations, norms, pca, threshold: float, layer: int, reps: int = 10,
               seed: int = 0) -> dict[str, float]:
    """Ceiling: each probe set built from two random halves of the dialogues; the mean same-emotion cosine
    between the halves (per set, averaged over ``reps`` splits)."""
    rng = np.random.default_rng(seed)
    n = len(acts.ids)
    out: dict[str, list[float]] = {k: [] for k in PROBES}
    emotions = set(acts.labels["human"]) | set(acts.labels["assistant"])

    def covers(rows) -> bool:
        return all({acts.labels[role][i] for i in rows} == emotions for role in ROLES)

    for _ in range(reps):
        for _try in range(200):  # halves in which every emotion occurs for both speakers
            perm = rng.permutation(n)
            if covers(perm[: n // 2]) and covers(perm[n // 2:]):
                break
        else:
            raise ValueError("Too few dialogues to split into halves that hold every emotion for both speakers.")
        a = build_probes(acts, norms, pca, threshold, rows=perm[: n // 2])
        b = build_probes(acts, norms, pca, threshold, rows=perm[n // 2:])
        for k in PROBES:
            u, v = unit_rows(a[k].at(layer).numpy()), unit_rows(b[k].at(layer).numpy())
            out[k].append(float(np.mean(np.sum(u * v, axis=1))))
    return {k: float(np.mean(v)) for k, v in out.items()}


def heldout_accuracy(acts: SpeakerActivations, norms, pca, threshold: float, layer: int, stories: EmotionVectors,
                     n_folds: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Held-out top-1 of each probe set, and of the story vectors, at reading the emotion it is grouped by
    from the tokens it averages (folds by topic, so a test dialogue's topic was never seen)."""
    from sklearn.model_selection import GroupKFold

    emotions = sorted(set(acts.labels["human"]) | set(acts.labels["assistant"]))
    common = [e for e in emotions if e in set(stories.emotions)]  # story vectors may cover a subset (02's emotions)
    li = acts.layers.index(layer)
    gkf = GroupKFold(n_splits=min(n_folds, len(set(acts.topics))))
    hits = {k: [] for k in PROBES}
    s = stories.select(common).at(layer).numpy()
    story = unit_rows(s - s.mean(0, keepdims=True))
    story_hits: dict[str, list] = {k: [] for k in PROBES}
    for train, test in gkf.split(np.zeros(len(acts.ids)), groups=[str(t) for t in acts.topics]):
        probes = build_probes(acts, norms, pca, threshold, emotions=emotions, rows=train)
        for name, (tokens, role) in PROBES.items():
            x = acts.x[test, ROLES.index(tokens), li].numpy()
            x = x - acts.x[train, ROLES.index(tokens), li].numpy().mean(0, keepdims=True)
            truth = [acts.labels[role][i] for i in test]
            guess = np.asarray(emotions)[np.argmax(unit_rows(x) @ unit_rows(probes[name].at(layer).numpy()).T, axis=1)]
            hits[name] += list(guess == np.asarray(truth))
            keep = np.isin(truth, common)
            sguess = np.asarray(common)[np.argmax(unit_rows(x[keep]) @ story.T, axis=1)]
            story_hits[name] += list(sguess == np.asarray(truth)[keep])
    return {name: {"probe_top1": float(np.mean(hits[name])), "story_top1": float(np.mean(story_hits[name])),
                   "chance": 1 / len(emotions), "story_chance": 1 / len(common), "n": len(hits[name]),
                   "story_n": len(story_hits[name])} for name in PROBES}


def nearest_story_emotions(probe: EmotionVectors, stories: EmotionVectors, layer: int, k: int = 3) -> dict[str, list]:
    """For each emotion of an (other-speaker) probe set, the ``k`` story emotions (of all 171) whose
    vectors are closest by cosine: the paper's Table 14 with story vectors standing in for its
    171 present-speaker probes (its text: story probes resemble the present-speaker group)."""
    p = unit_rows(probe.at(layer).numpy())
    s = unit_rows(stories.at(layer).numpy())
    cos = p @ s.T
    return {e: [(stories.emotions[j], float(cos[i, j])) for j in np.argsort(-cos[i])[:k]]
            for i, e in enumerate(probe.emotions)}


def table14(probe: EmotionVectors, stories: EmotionVectors, layer: int, k: int = 3):
    """Nearest story emotions of each other-speaker probe, with its own-emotion cosine and rank, and the
    paper's list where it gives one."""
    import pandas as pd

    near = nearest_story_emotions(probe, stories, layer, k)
    p = unit_rows(probe.at(layer).numpy())
    s = unit_rows(stories.at(layer).numpy())
    rows = []
    for i, e in enumerate(probe.emotions):
        cos = p[i] @ s.T
        own = stories.emotions.index(e) if e in stories.emotions else None
        rows.append({"other-speaker emotion": e,
                     "nearest story emotions (ours)": ", ".join(f"{w} {c:.2f}" for w, c in near[e]),
                     "cos with own story vector": None if own is None else round(float(cos[own]), 3),
                     "rank of own": None if own is None else int((cos > cos[own]).sum()) + 1,
                     "paper (Table 14)": ", ".join(w + (f" {c:.3f}" if c is not None else "")
                                                   for w, c in PAPER_TABLE14.get(e, [])) or "-"})
    return pd.DataFrame(rows)


def rating_axis(stories: EmotionVectors, layer: int, ratings: np.ndarray) -> np.ndarray:
    """A unit direction that tracks a human rating over the story vectors: the rating-weighted sum of
    the centred, unit story vectors (NaN ratings skipped)."""
    v = stories.at(layer).numpy()
    v = unit_rows(v - v.mean(0, keepdims=True))
    ok = np.isfinite(ratings)
    z = (ratings[ok] - ratings[ok].mean()) / max(ratings[ok].std(), 1e-12)
    return unit_rows(z @ v[ok])


def across_speakers(probes: dict[str, EmotionVectors], stories: EmotionVectors, layer: int,
                    ratings: dict[str, np.ndarray], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per dimension (valence, arousal) and probe set: across the probes' emotions, the correlation between
    the emotion's human rating and where its probe sits on the story-derived rating axis.

    For a present-speaker set this should be positive (the probe carries the speaker's own feeling);
    for an other-speaker set the paper's reading is the present speaker's *reaction*: arousal r = -0.47,
    valence r = 0.07. With 12 emotions the interval is wide, and it is reported.
    """
    from emolib.stats import pearson

    emotions = shared_emotions(probes, stories)
    idx = [stories.emotions.index(e) for e in emotions]
    rows = []
    for dim, r_all in ratings.items():
        axis = rating_axis(stories, layer, r_all)
        own = r_all[idx]
        for name, p in probes.items():
            score = unit_rows(p.select(emotions).at(layer).numpy()) @ axis
            c = pearson(own, score, n_boot=n_boot, n_perm=n_boot, seed=seed)
            rows.append({"dimension": dim, "probe": name, "r": c.r, "ci_low": c.ci_low, "ci_high": c.ci_high,
                         "p_perm": c.p_perm, "n": c.n, "paper": PAPER_ACROSS.get(dim) if name in OTHER else None})
    return rows


# ---- figures -----------------------------------------------------------------------------------


def similarity_figure(same: np.ndarray, struct: np.ndarray, names: Sequence[str], floor: dict[str, float],
                      ceiling: dict[str, float], layer: int):
    """Paper Fig. 18 for our data: same-emotion cosine between probe sets, and the correlation of their
    emotion-by-emotion structures, with the shuffled-label floor and the split-half ceiling in the title."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.8))
    short = [n.replace("present: ", "present\n").replace("other: ", "other\n") for n in names]
    for ax, mat, title in ((axes[0], same, "same-emotion cosine"), (axes[1], struct, "structure correlation")):
        sns.heatmap(mat, annot=True, fmt=".2f", cmap="RdBu_r", vmin=-1, vmax=1, square=True, cbar=False, ax=ax,
                    xticklabels=short, yticklabels=short, annot_kws={"size": 8})
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
    ceil = ", ".join(f"{k.split(': ')[1] if ': ' in k else k} {v:.2f}" for k, v in ceiling.items())
    fig.suptitle(f"Two-speaker probe sets at block {layer}. Shuffled-label floor |cos| {floor['mean_abs']:.2f} "
                 f"(95th pct {floor['p95_abs']:.2f}); split-half ceiling: {ceil}", fontsize=8.5)
    fig.tight_layout()
    data = {"names": list(names), "same_emotion_cosine": same, "structure_correlation": struct, "floor": floor,
            "split_half": ceiling, "layer": layer}
    return fig, data


def across_figure(rows: Sequence[dict[str, Any]], layer: int):
    """Correlation of each probe set's position on the valence and arousal axes with the emotions' ratings."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    probes = list(dict.fromkeys(df["probe"]))
    dims = list(dict.fromkeys(df["dimension"]))
    width = 0.8 / len(dims)
    colors = {"valence": "tab:green", "arousal": "tab:orange"}
    for k, dim in enumerate(dims):
        sub = df[df["dimension"] == dim].set_index("probe").loc[probes]
        xs = np.arange(len(probes)) + (k - (len(dims) - 1) / 2) * width
        ax.bar(xs, sub["r"], width=width, color=colors.get(dim, "grey"), label=dim, alpha=0.85)
        ax.errorbar(xs, sub["r"], yerr=[sub["r"] - sub["ci_low"], sub["ci_high"] - sub["r"]], fmt="none",
                    ecolor="black", lw=1)
    ax.set_xticks(range(len(probes)), probes)
    ax.legend(fontsize=8)
    for dim, val in PAPER_ACROSS.items():
        ax.axhline(val, ls=":", lw=1, color=colors[dim])
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylim(-1, 1)
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_ylabel(f"r with human rating ({int(df['n'].max())} emotions)")
    ax.set_title(f"Where each probe set sits on the story-derived valence / arousal axes (block {layer}); dotted: "
                 "paper's other-speaker r", fontsize=9)
    fig.tight_layout()
    return fig, {"rows": list(rows), "layer": layer}


def blind_check() -> dict[str, Any]:
    """A blind reader's two guesses per speaker on a sample of the two-speaker dialogues (the reader saw
    the dialogues and the 12 emotion words, never the assignments): top-1 and top-2 hit rates."""
    rows = load_dialogues("blind_check.jsonl")
    out: dict[str, Any] = {"n": len(rows), "chance_top1": 1 / 12}
    for role in ROLES:
        out[f"{role}_top1"] = sum(r[f"{role}_top2"][0] == r[f"{role}_emotion"] for r in rows) / len(rows)
        out[f"{role}_top2"] = sum(r[f"{role}_emotion"] in r[f"{role}_top2"] for r in rows) / len(rows)
    return out


# ---- stage glue: where the sets live in a run folder ---------------------------------------------


def run_activations(model, tokenizer, info, run: str | Path, batch_size: int = 8) -> SpeakerActivations:
    """The two-speaker activations of this run's model (pooled once, then read from
    ``<run>/activations/two_speaker.safetensors``)."""
    return pool_dialogues(model, tokenizer, load_dialogues(), list(range(info.n_layers)), batch_size=batch_size,
                          cache=Path(run) / "activations" / "two_speaker.safetensors",
                          model_id=f"{info.name}@{info.revision}")


def probes_folder(run: str | Path) -> Path:
    return Path(run) / "speaker_probes"


def greeting_steering(model, tokenizer, sets: dict[str, EmotionVectors], layer: int, strength: float,
                      n_random: int = 10, seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Steer the reply to the greeting ("Hi.") with each set's vector of each emotion and score the reply
    openers of our own (``probes.json``: how one answers someone who feels that emotion).

    Score of emotion ``e`` under a steering: the mean change (vs unsteered) of the log-probability of
    ``e``'s openers minus that of the other emotions' openers -- does the reply turn toward *that*
    emotion's answer? The paper: other-speaker vectors make the Assistant respond *to* the emotion
    (reassure the afraid, apologise to the angry). Random directions of the same strength give each
    emotion's noise band.
    """
    from emolib.study.scoring import reply_logprobs

    spec = probe_texts()
    emotions = [e for e in next(iter(sets.values())).emotions
                if e in spec["reply_openers"] and all(e in v.emotions for v in sets.values())]
    openers, owner = [], []
    for e in emotions:
        for o in spec["reply_openers"][e]:
            openers.append(o)
            owner.append(e)
    owner_a = np.asarray(owner)
    users = [spec["greeting"]]

    def scores(lp: np.ndarray) -> np.ndarray:  # [openers] change -> per-emotion specificity
        return np.asarray([lp[owner_a == e].mean() - lp[owner_a != e].mean() for e in emotions])

    base = reply_logprobs(model, tokenizer, users, openers, None, batch_size)[0].numpy()
    out: dict[str, Any] = {"emotions": emotions, "strength": strength, "layer": layer, "greeting": users[0],
                           "conditions": {}}
    for name, vecs in sets.items():
        row = []
        for e in emotions:
            lp = reply_logprobs(model, tokenizer, users, openers, vecs.steering(e, strength, layers=layer),
                                batch_size)[0].numpy()
            row.append(scores(lp - base)[emotions.index(e)])
        out["conditions"][name] = np.asarray(row)
    g = torch.Generator().manual_seed(seed)
    any_set = next(iter(sets.values()))
    rand = []
    for _ in range(n_random):
        d = torch.randn(any_set.width, generator=g)
        lp = reply_logprobs(model, tokenizer, users, openers, any_set.steering(d, strength, layers=layer),
                            batch_size)[0].numpy()
        rand.append(scores(lp - base))
    out["random"] = np.asarray(rand)  # [n_random, emotions]
    return out


def greeting_table(res: dict[str, Any]):
    """Per emotion and condition, the opener specificity, with the random directions' band and whether the
    condition leaves it; a final row with the mean over emotions."""
    import pandas as pd

    rand = res["random"]
    df = pd.DataFrame({k: v for k, v in res["conditions"].items()}, index=res["emotions"])
    df["random min"], df["random max"] = rand.min(0), rand.max(0)
    for k in res["conditions"]:
        df[f"{k} beyond"] = res["conditions"][k] > rand.max(0)
    return df


def greeting_figure(res: dict[str, Any]):
    """Opener specificity per emotion under each condition, with the random band."""
    import matplotlib.pyplot as plt

    emotions = res["emotions"]
    x = np.arange(len(emotions))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    rand = res["random"]
    ax.fill_between(x, rand.min(0), rand.max(0), color="grey", alpha=0.25, step="mid", label="random directions")
    conds = list(res["conditions"])
    w = 0.8 / len(conds)
    for k, name in enumerate(conds):
        ax.bar(x + (k - (len(conds) - 1) / 2) * w, res["conditions"][name], w, label=name)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(x, emotions, rotation=45, fontsize=8)
    ax.set_ylabel("Δ log P(own openers) − Δ log P(others')")
    ax.set_title(f"Replies to {res['greeting']!r} steered at block {res['layer']} ({res['strength']:.2f} x norm): "
                 "do they turn to that emotion's answer?", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig, {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in res.items() if k != "conditions"} | {
        "conditions": {k: v.tolist() for k, v in res["conditions"].items()}}


def greeting_samples(model, tokenizer, sets: dict[str, EmotionVectors], emotions: Sequence[str], layer: int,
                     strength: float, max_new_tokens: int = 24) -> list[dict[str, Any]]:
    """Greedy replies to the greeting, unsteered and steered with each set's vector of each emotion."""
    from emolib.study.scoring import greedy_reply

    g = probe_texts()["greeting"]
    rows = [{"set": "(none)", "emotion": "-", "reply": greedy_reply(model, tokenizer, g, None, max_new_tokens)}]
    for name, vecs in sets.items():
        for e in emotions:
            st = vecs.steering(e, strength, layers=layer)
            rows.append({"set": name, "emotion": e, "reply": greedy_reply(model, tokenizer, g, st, max_new_tokens)})
    return rows


def check_rows(summary: dict[str, Any], blind: dict[str, Any], acc: dict[str, dict[str, float]],
               half: dict[str, float], layer: int) -> list[dict[str, Any]]:
    """Stage 03's headline rows for the two-speaker probes."""
    rows = [{"key": "two_speaker_dialogues", "label": "two-speaker dialogues (each emotion per speaker, min)",
             "ours": summary["n_dialogues"], "paper": None,
             "note": f"{summary['per_speaker_min']['human']} / {summary['per_speaker_min']['assistant']} per emotion "
                     f"(Human / Assistant); {summary['exchanges_min']}-{summary['exchanges_max']} exchanges"},
            {"key": "two_speaker_blind_top1", "label": "blind reader top-1 on a sample, Human / Assistant",
             "ours": (blind["human_top1"] + blind["assistant_top1"]) / 2, "paper": None,
             "note": f"{blind['n']} dialogues; Human {blind['human_top1']:.2f}, Assistant {blind['assistant_top1']:.2f}; "
                     f"chance {blind['chance_top1']:.3f}"}]
    for name, a in acc.items():
        rows.append({"key": f"speaker_heldout_{slug(name)}", "label": f"held-out top-1, probe set '{name}'",
                     "ours": a["probe_top1"], "paper": None,
                     "note": f"story vectors on the same tokens: {a['story_top1']:.3f}; chance {a['chance']:.3f}; "
                             f"split-half cos {half.get(name, float('nan')):.2f}; block {layer}"})
    return rows


def map_rows(same: np.ndarray, names: Sequence[str], floor: dict[str, float], across: Sequence[dict[str, Any]],
             layer: int) -> list[dict[str, Any]]:
    """Stage 04's headline rows: present-present, other-other and present-other cosines, and the
    cross-speaker valence and arousal correlations beside the paper's."""
    ix = {n: i for i, n in enumerate(names)}
    pp = same[ix[PRESENT[0]], ix[PRESENT[1]]]
    oo = same[ix[OTHER[0]], ix[OTHER[1]]]
    po = np.mean([same[ix[a], ix[b]] for a in PRESENT for b in OTHER])
    ps = np.mean([same[ix[a], ix["story"]] for a in PRESENT])
    os_ = np.mean([same[ix[a], ix["story"]] for a in OTHER])
    note = f"block {layer}; shuffled-label floor |cos| {floor['mean_abs']:.2f} (95th pct {floor['p95_abs']:.2f})"
    rows = [{"key": "speaker_present_present", "label": "cos, present (Human) vs present (Assistant) probes",
             "ours": pp, "paper": "high", "note": note},
            {"key": "speaker_other_other", "label": "cos, other-speaker probes of the two turns", "ours": oo,
             "paper": "high", "note": note},
            {"key": "speaker_present_other", "label": "cos, present vs other probes (mean of 4 pairs)", "ours": po,
             "paper": "near 0", "note": note},
            {"key": "speaker_story_present_vs_other", "label": "cos of story vectors with present / other probes",
             "ours": ps, "paper": "story ~ present", "note": f"other: {os_:.3f}"}]
    for r in across:
        if r["probe"] == "other: on Assistant turns":
            rows.append({"key": f"speaker_across_{r['dimension']}", "label": f"{r['dimension']} r across speakers "
                         "(emotion's rating vs its other-speaker probe)", "ours": r["r"], "paper": r["paper"],
                         "note": f"95% CI [{r['ci_low']:.2f}, {r['ci_high']:.2f}], p = {r['p_perm']:.2g}, n = {r['n']}"})
    return rows


def steer_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 06's rows: mean opener specificity per condition and how many emotions leave the random band."""
    rmax = res["random"].max(0)
    rows = []
    for name, v in res["conditions"].items():
        rows.append({"key": f"greeting_{slug(name)}", "label": f"'Hi.' steered with {name} vectors: opener specificity",
                     "ours": float(np.mean(v)), "paper": "responds to it" if "other" in name else None,
                     "note": f"{int((v > rmax).sum())} of {len(v)} emotions above every random direction "
                             f"(random mean {float(res['random'].mean()):.3f})"})
    return rows
