"""The assignment's provided code: the data every exercise reads, and the figure each one unlocks.

Each ``show_*`` function takes the student's own functions, so the figure is drawn by their code
and looks right only when their code is right. Everything else (the model, the forward passes,
the PCA) is emolib's, so a mistake in exercise 2 cannot spoil the figure of exercise 5: every
exercise stands alone, and a notebook with blank answers still runs to the end (:func:`attempt`).

Sizes are small on purpose (12 emotions x 6 reference stories, 40 neutral dialogues, one block):
on the embedded SmolLM2-135M the whole notebook runs in about a minute on a laptop CPU.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

# Ordered pleasant -> unpleasant, so the cosine matrix shows its two blocks.
EMOTIONS = ("happy", "proud", "grateful", "loving", "hopeful", "calm",
            "sad", "lonely", "afraid", "nervous", "angry", "desperate")
N_POSITIVE = 6
MODEL_ENV = "EMOLIB_TEACHING_MODEL"

# Our own user messages for the read-out figure, one per emotion it is meant to evoke.
MESSAGES = (
    ("My daughter just called: she got into the university she dreamed of!", "happy"),
    ("Thank you for staying late yesterday to help me move all those boxes.", "grateful"),
    ("The vet said there was nothing more they could do for our old dog.", "sad"),
    ("There is someone standing outside my window at 3am and the door won't lock.", "afraid"),
    ("My manager presented my project as his own work in front of everyone, again.", "angry"),
    ("If I can't pay the rent by tonight they will put my kids and me on the street.", "desperate"),
)

POSITIVE_WORDS = (" happy", " great", " wonderful", " good", " glad")
NEGATIVE_WORDS = (" sad", " terrible", " awful", " bad", " upset")

ACTIVITIES = ("helpful-1", "helpful-8", "engaging-7", "social-6", "self-5", "neutral-4", "aversive-3",
              "misaligned-2", "unsafe-1", "unsafe-8")


def attempt(exercise: int, fn: Callable, *args, **kwargs) -> Any:
    """Run a figure that depends on the student's code; never let it stop the notebook.

    Blank answers (``NotImplementedError``) get a friendly line, other errors a short traceback;
    either way the next cells still run, which is what lets the autograder score later exercises.
    """
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        print(f"Exercise {exercise} is not done yet: its figure appears here once your answer is in.")
    except Exception as e:  # noqa: BLE001 - any error of the student's code is reported, not raised
        tb = traceback.format_exception(type(e), e, e.__traceback__, limit=-2)
        print(f"Exercise {exercise}: the figure could not be drawn, your code raised {type(e).__name__}: {e}\n"
              + "".join(tb[-2:]) + "The test cells above say more.")
    return None


@dataclass
class Classroom:
    """What the exercises share: the model, the block read, and pooled story and neutral activations."""

    model: Any
    tokenizer: Any
    model_name: str
    layer: int
    emotions: list[str]
    story_means: torch.Tensor  # [n_stories, width] at ``layer``, pooled from token ``start``
    labels: list[str]
    neutral_means: torch.Tensor  # [n_neutral, width]
    residual_norm: float  # mean norm of the residual stream at ``layer``
    start: int
    seconds: float

    @cached_property
    def neutral_pca(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(components [k, width], explained-variance ratios)`` of the neutral dialogues' pooled
        activations (sklearn centres them); computed once, shared by exercises 3-6."""
        from sklearn.decomposition import PCA

        pca = PCA(svd_solver="full").fit(self.neutral_means.double().numpy())
        return torch.as_tensor(pca.components_, dtype=torch.float32), torch.as_tensor(pca.explained_variance_ratio_)

    @cached_property
    def reference_vectors(self) -> torch.Tensor:
        """emolib's own denoised vectors for the classroom's emotions (so exercises 4-6 do not depend on 2-3)."""
        from emolib.vectors import emotion_means, grand_mean_center, n_components_for, project_out

        means, _, _ = emotion_means(self.story_means, self.labels, self.emotions)
        vec, _ = grand_mean_center(means)
        comps, ratio = self.neutral_pca
        return project_out(vec, comps[:n_components_for(ratio, 0.5)])

    def describe(self) -> str:
        return (f"{self.model_name}: block {self.layer}, {len(self.labels)} stories of {len(self.emotions)} emotions, "
                f"{len(self.neutral_means)} neutral dialogues, pooled from token {self.start}; "
                f"mean residual norm {self.residual_norm:.1f}; {self.seconds:.0f} s.")


def default_model() -> str:
    """The model the notebook loads: ``$EMOLIB_TEACHING_MODEL`` (the tests use ``tiny-random``), else the embedded one."""
    return os.environ.get(MODEL_ENV) or "smollm2-135m-instruct"


def setup(model: str | None = None, stories_per_emotion: int = 6, n_neutral: int = 40, start: int = 50,
          emotions: Sequence[str] = EMOTIONS) -> Classroom:
    """Load the model and pool the reference stories and neutral dialogues at one block (~2/3 depth)."""
    import time

    from emolib.capture import pooled_means
    from emolib.models import find_layers, load_model
    from emolib.study.corpus import load_corpus

    t0 = time.perf_counter()
    spec = model or default_model()
    mdl, tok, info = load_model(spec)
    n_layers = len(find_layers(mdl))
    layer = min(n_layers - 1, round(2 * n_layers / 3))
    stories = load_corpus("reference", "story")
    chosen = []
    for e in emotions:
        rows = [r for r in stories if r["emotion"] == e][:stories_per_emotion]
        if not rows:
            raise ValueError(f"The reference corpus has no story for {e!r}.")
        chosen.extend(rows)
    neutral = load_corpus("reference", "neutral")[:n_neutral]
    pooled = pooled_means(mdl, tok, [r["text"] for r in chosen], layers=[layer], start=start, batch_size=8)
    pooled_n = pooled_means(mdl, tok, [r["text"] for r in neutral], layers=[layer], start=start, batch_size=8)
    return Classroom(model=mdl, tokenizer=tok, model_name=info.name, layer=layer, emotions=list(emotions),
                     story_means=pooled.means[:, 0], labels=[r["emotion"] for r in chosen],
                     neutral_means=pooled_n.means[:, 0], residual_norm=float(pooled.residual_norms[0]),
                     start=start, seconds=time.perf_counter() - t0)


def _plt():
    import matplotlib.pyplot as plt

    return plt


# ---- exercise 1 ------------------------------------------------------------------------------------
def show_pool_mask(cls: Classroom, pool_mask: Callable, start: int = 8) -> dict[str, float]:
    """Pool four left-padded texts of different lengths with the student's mask; compare to emolib."""
    from emolib.capture import pad_batch, pad_id_of, pooled_means, record_residual
    from emolib.study.corpus import load_corpus

    first = [r["text"] for r in load_corpus("reference", "story")[:4]]
    texts = [" ".join(text.split()[:n]) for text, n in zip(first, (10, 16, 24, 30))]
    enc = [cls.tokenizer(t)["input_ids"] for t in texts]
    ids, mask = pad_batch(enc, pad_id_of(cls.tokenizer), "left")
    m = pool_mask(mask, start).bool()
    with record_residual(cls.model, [cls.layer]) as rec, torch.inference_mode():
        cls.model(input_ids=ids, attention_mask=mask)
    h = rec[cls.layer][0].float()
    yours = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
    ref = pooled_means(cls.model, cls.tokenizer, texts, layers=[cls.layer], start=start).means[:, 0]
    diff = float((yours - ref).abs().max())
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 2.4))
    img = np.where(mask.numpy() == 0, 0.0, np.where(m.numpy(), 2.0, 1.0))
    ax.imshow(img, cmap="Greys", vmin=0, vmax=2.2, aspect="auto")
    ax.set_yticks(range(len(texts)), [f"text {i} ({len(e)} tok)" for i, e in enumerate(enc)])
    ax.set_xlabel("position in the padded batch (white = padding, grey = skipped, black = averaged)")
    ax.set_title(f"Your pooling mask, start={start}, left padding")
    fig.tight_layout()
    plt.show()
    print(f"Your pooled means vs emolib.capture.pooled_means: max |difference| = {diff:.2e} "
          f"({'they match' if diff < 1e-4 else 'they differ: look at the test messages above'}).")
    return {"max_abs_diff": diff}


# ---- exercise 2 ------------------------------------------------------------------------------------
def emotion_vectors(cls: Classroom, emotion_means: Callable, grand_mean_center: Callable,
                    rows: Sequence[int] | None = None) -> torch.Tensor:
    """The student's pipeline: per-emotion means of the story means, then grand-mean centring."""
    idx = list(range(len(cls.labels))) if rows is None else list(rows)
    means, _, _ = emotion_means(cls.story_means[idx], [cls.labels[i] for i in idx], cls.emotions)
    centred, _ = grand_mean_center(means)
    return torch.as_tensor(centred).float()


def show_vectors(cls: Classroom, emotion_means: Callable, grand_mean_center: Callable) -> dict[str, float]:
    """Cosine matrix of the student's emotion vectors: pleasant and unpleasant emotions should form two blocks."""
    from emolib.vectors import cosine_similarity

    v = emotion_vectors(cls, emotion_means, grand_mean_center)
    c = cosine_similarity(v, v).numpy()
    p = N_POSITIVE
    off = ~np.eye(len(c), dtype=bool)
    same = float(np.concatenate([c[:p, :p][off[:p, :p]], c[p:, p:][off[p:, p:]]]).mean())
    cross = float(c[:p, p:].mean())
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(c)), cls.emotions, rotation=90)
    ax.set_yticks(range(len(c)), cls.emotions)
    ax.axhline(p - 0.5, color="k", lw=0.8)
    ax.axvline(p - 0.5, color="k", lw=0.8)
    ax.set_title(f"Cosine between your emotion vectors (block {cls.layer})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    plt.show()
    print(f"mean cosine within the pleasant/unpleasant groups {same:+.2f}, across them {cross:+.2f}")
    return {"within": same, "across": cross}


# ---- exercise 3 ------------------------------------------------------------------------------------
def loo_accuracy(cls: Classroom, transform: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Leave-one-story-out nearest-vector accuracy: vectors from the other stories, cosine of the
    held-out story (minus their grand mean) with each; ``transform`` is applied to the vectors."""
    from emolib.vectors import cosine_similarity, emotion_means, grand_mean_center

    hits = 0
    for i in range(len(cls.labels)):
        rest = [j for j in range(len(cls.labels)) if j != i]
        means, names, _ = emotion_means(cls.story_means[rest], [cls.labels[j] for j in rest], cls.emotions)
        vec, centre = grand_mean_center(means)
        scores = cosine_similarity(cls.story_means[i] - centre, transform(vec))
        hits += names[int(scores.argmax())] == cls.labels[i]
    return hits / len(cls.labels)


def show_denoising(cls: Classroom, n_components_for: Callable, project_out: Callable,
                   threshold: float = 0.5) -> dict[str, float]:
    """How many neutral PCs the 50 % rule removes, and what removing them does to held-out accuracy."""
    comps, ratio = cls.neutral_pca
    k = int(n_components_for(ratio, threshold))
    basis = comps[:k]
    raw = loo_accuracy(cls, lambda v: v)
    den = loo_accuracy(cls, lambda v: project_out(v, basis))
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(np.arange(1, len(ratio) + 1), np.cumsum(ratio.numpy()), marker=".")
    a1.axhline(threshold, color="grey", ls=":")
    a1.axvline(k, color="C3", ls="--", label=f"k = {k}")
    a1.set_xlabel("neutral principal components")
    a1.set_ylabel("cumulative explained variance")
    a1.legend()
    a2.bar(["raw", f"denoised (k={k})"], [raw, den], color=["C7", "C0"])
    a2.axhline(1 / len(cls.emotions), color="k", ls=":", label="chance")
    a2.set_ylim(0, 1)
    a2.set_ylabel("leave-one-out top-1 accuracy")
    a2.legend()
    fig.suptitle(f"Projecting out neutral PCs (block {cls.layer})")
    fig.tight_layout()
    plt.show()
    print(f"k = {k} components reach {threshold:.0%} of the neutral variance; held-out accuracy raw {raw:.2f}, "
          f"denoised {den:.2f} (chance {1 / len(cls.emotions):.2f}).")
    return {"k": k, "raw": raw, "denoised": den}


# ---- exercise 4 ------------------------------------------------------------------------------------
def show_readout(cls: Classroom, cosine_similarity: Callable) -> dict[str, float]:
    """Cosine of the assistant-header activation with each emotion vector, for six user messages."""
    from emolib.study.implicit import header_activations

    vec = cls.reference_vectors
    acts = header_activations(cls.model, cls.tokenizer, [m for m, _ in MESSAGES], [cls.layer])[:, 0]
    cos = torch.as_tensor(cosine_similarity(acts, vec)).float().numpy()
    z = (cos - cos.mean(0)) / cos.std(0).clip(1e-9)
    wins = sum(cls.emotions[int(np.argmax(z[i]))] == e for i, (_, e) in enumerate(MESSAGES))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    im = ax.imshow(z, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(len(cls.emotions)), cls.emotions, rotation=90)
    ax.set_yticks(range(len(MESSAGES)), [f"[{e}] {m[:38]}..." for m, e in MESSAGES])
    for i, (_, e) in enumerate(MESSAGES):
        ax.add_patch(_plt().Rectangle((cls.emotions.index(e) - 0.5, i - 0.5), 1, 1, fill=False, ec="k", lw=1.5))
    ax.set_title("Read-out at the assistant-header token (z-scored per emotion over the messages)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    plt.show()
    print(f"{wins} of {len(MESSAGES)} messages have their intended emotion (boxed) as the top read-out "
          f"(chance {len(MESSAGES) / len(cls.emotions):.1f}).")
    return {"wins": float(wins)}


# ---- exercise 5 ------------------------------------------------------------------------------------
def _first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]


def show_steering(cls: Classroom, add_vector: Callable, emotion: str = "happy",
                  strengths: Sequence[float] = (-0.2, -0.1, 0.0, 0.1, 0.2), max_new_tokens: int = 24) -> dict:
    """Steer along one emotion vector with the student's hook: the next-token preference for pleasant
    over unpleasant words, and two greedy continuations."""
    from emolib.chat import format_user_turn

    vec = cls.reference_vectors[cls.emotions.index(emotion)]
    unit = vec / vec.norm()
    fp = format_user_turn(cls.tokenizer, "In one sentence: how was your day?")
    ids = torch.tensor([fp.ids])
    pos, neg = _first_token_ids(cls.tokenizer, POSITIVE_WORDS), _first_token_ids(cls.tokenizer, NEGATIVE_WORDS)
    margins = []
    texts = {}
    for s in strengths:
        with add_vector(cls.model, cls.layer, s * cls.residual_norm * unit), torch.inference_mode():
            lp = torch.log_softmax(cls.model(input_ids=ids).logits[0, -1].float(), -1)
            if s in (0.0, 0.1):
                out = cls.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=cls.tokenizer.pad_token_id)
                texts[s] = cls.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        margins.append(float(lp[pos].logsumexp(0) - lp[neg].logsumexp(0)))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(strengths, margins, marker="o")
    ax.set_xlabel(f"strength (x mean residual norm) along '{emotion}'")
    ax.set_ylabel("log P(pleasant words) - log P(unpleasant)")
    ax.set_title(f"Steering at block {cls.layer} with your hook")
    fig.tight_layout()
    plt.show()
    for s, t in texts.items():
        print(f"strength {s:+.2f}: {t!r}")
    return {"margins": margins, "texts": texts}


# ---- exercise 6 ------------------------------------------------------------------------------------
def show_elo(cls: Classroom, option_probs: Callable, fit_bradley_terry: Callable) -> dict:
    """Ten activities, every pair in both orders, read from the (A)/(B) logits; Elo from the student's fit."""
    from emolib.study.preferences import ELO_MEAN, ELO_SCALE, load_activities, pair_items
    from emolib.study.scoring import last_token_logits, option_logprobs

    acts = {a["id"]: a for a in load_activities()}
    chosen = [acts[i] for i in ACTIVITIES]
    pairs = [(i, j) for i in range(len(chosen)) for j in range(i + 1, len(chosen))]
    items = pair_items(cls.tokenizer, [a["text"] for a in chosen], pairs, both_orders=True)
    with torch.inference_mode():
        logits = last_token_logits(cls.model, cls.tokenizer, [it.prompt.ids for it in items])
    probs, mass = option_probs(option_logprobs(logits, [it.token_ids for it in items]))
    p_first = torch.as_tensor(probs)[:, 0].numpy().astype(float)
    fit = fit_bradley_terry([it.first for it in items], [it.second for it in items], p_first, len(chosen))
    elo = ELO_MEAN + ELO_SCALE * np.asarray(fit.scores)
    order = np.argsort(elo)
    colors = {c: f"C{k}" for k, c in enumerate(sorted({a["category"] for a in chosen}))}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(range(len(chosen)), elo[order] - ELO_MEAN, left=ELO_MEAN,
            color=[colors[chosen[i]["category"]] for i in order])
    ax.set_yticks(range(len(chosen)), [f"{chosen[i]['text'][:45]} [{chosen[i]['category']}]" for i in order],
                  fontsize=8)
    ax.set_xlabel("Elo (Bradley-Terry fit of P(A) over both orders)")
    ax.set_title("What the model says it would rather do")
    fig.tight_layout()
    plt.show()
    print(f"{len(items)} comparisons; mean probability mass on the two letters {float(torch.as_tensor(mass).mean()):.2f} "
          f"(near 0: the model is not reading the format); position bias {fit.bias:+.2f} (log-odds for option A).")
    return {"elo": elo.tolist(), "bias": float(fit.bias)}
