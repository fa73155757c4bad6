""""He feels" / "I feel" / "What just happened?": does adding an emotion vector make the model say
that emotion?

The paper (appendix Tables 6-8) steers with each of the 12 working vectors on the Assistant-turn
tokens up to and including a prefill, and reads the change in log-probability of each emotion word
as the continuation: after "How does he feel?" / "He feels" the matching word goes up and the
others down (a clean diagonal); after "How do you feel?" / "I feel" the matching word and its
relatives go up; "What just happened?" is the control in which no story should be invented.

Here each word's log-probability is the sum over its tokens (multi-token words are common in
small vocabularies), the matrix is ``delta[vector, word]`` = steered - unsteered, and the same
read-out under random unit directions of the same norm gives the band a diagonal entry must
clear. For "What just happened?" our log-prob read-out uses the prefill "It was" (how likely the
reply is to call the event by the steered emotion); the paper's check is the sampled text, which
:func:`sample_continuations` provides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from emolib.chat import ChatPrompt, build_prompt, continuation_ids
from emolib.steering import Steering, apply_steering
from emolib.study.controls import RandomSpread, random_directions, random_labels
from emolib.study.scoring import conditions_logprobs


@dataclass(frozen=True)
class FeelingPrompt:
    """A user question and the assistant prefill whose continuation is read."""

    name: str
    user: str
    prefill: str


FEELING_PROMPTS: dict[str, FeelingPrompt] = {
    "he_feels": FeelingPrompt("he_feels", "How does he feel?", "He feels"),
    "i_feel": FeelingPrompt("i_feel", "How do you feel?", "I feel"),
    "what_happened": FeelingPrompt("what_happened", "What just happened?", "It was"),
}


def prompt_and_scope(tokenizer, fp: FeelingPrompt, system: str | None = None) -> tuple[ChatPrompt, tuple[int, int]]:
    """The formatted prompt and the paper's steering span: the assistant turn up to and including
    the prefill (the emotion word itself is not steered)."""
    p = build_prompt(tokenizer, fp.user, fp.prefill, system)
    return p, (p.spans["assistant"][0], len(p.ids))


def word_ids(tokenizer, prompt: ChatPrompt, words: Sequence[str]) -> list[list[int]]:
    """Token ids of each word as the continuation (with a leading space) of the prompt."""
    return [continuation_ids(tokenizer, prompt, " " + w) for w in words]


@dataclass
class FeelingsResult:
    """Log-prob changes ``delta[prompt][direction, word]`` at one strength, plus the baseline.

    ``directions`` lists the emotion vectors first (same order as ``words`` when the steered
    emotions are the words) and then the random controls (``kinds`` tells which).
    """

    prompts: list[str]
    words: list[str]
    directions: list[str]
    kinds: list[str]
    strength: float
    layers: list[int]
    base: dict[str, list[float]]
    delta: dict[str, np.ndarray]
    n_word_tokens: list[int] = field(default_factory=list)

    def emotion_block(self, prompt: str) -> np.ndarray:
        """``[emotions, words]`` deltas for the emotion directions only."""
        k = [i for i, kind in enumerate(self.kinds) if kind == "emotion"]
        return np.asarray(self.delta[prompt])[k]

    def random_block(self, prompt: str) -> np.ndarray:
        k = [i for i, kind in enumerate(self.kinds) if kind == "random"]
        return np.asarray(self.delta[prompt])[k]

    def summary(self, prompt: str) -> dict[str, Any]:
        emo = [d for d, k in zip(self.directions, self.kinds) if k == "emotion"]
        return diagonal_summary(self.emotion_block(prompt), emo, self.words, self.random_block(prompt))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta"] = {k: np.asarray(v).tolist() for k, v in self.delta.items()}
        d["summary"] = {p: self.summary(p) for p in self.prompts}
        return d


def diagonal_summary(delta: np.ndarray, emotions: Sequence[str], words: Sequence[str],
                     random_delta: np.ndarray | None = None) -> dict[str, Any]:
    """How diagonal is a steering x word matrix of log-prob changes.

    * ``column_wins``: words whose largest increase comes from their own vector (compares vectors on
      the same word, so word frequency cancels); chance is 1/len(emotions) per word;
    * ``row_wins``: vectors whose own word rises more than any other word;
    * ``beats_random``: diagonal entries above the largest change any random direction caused to
      that word; ``diag_minus_offdiag``: mean diagonal minus mean off-diagonal entry.
    """
    delta = np.asarray(delta, dtype=float)
    col = {w: int(np.argmax(delta[:, j])) for j, w in enumerate(words)}
    pairs = [(i, list(words).index(e)) for i, e in enumerate(emotions) if e in words]
    col_wins = [words[j] for i, j in pairs if col[words[j]] == i]
    row_wins = [emotions[i] for i, j in pairs if int(np.argmax(delta[i])) == j]
    diag = np.array([delta[i, j] for i, j in pairs]) if pairs else np.array([])
    mask = np.ones_like(delta, dtype=bool)
    for i, j in pairs:
        mask[i, j] = False
    out: dict[str, Any] = {
        "n": len(pairs), "column_wins": len(col_wins), "column_win_words": col_wins,
        "row_wins": len(row_wins), "row_win_emotions": row_wins,
        "mean_diag": float(diag.mean()) if diag.size else float("nan"),
        "mean_offdiag": float(delta[mask].mean()) if mask.any() else float("nan"),
    }
    out["diag_minus_offdiag"] = out["mean_diag"] - out["mean_offdiag"]
    if random_delta is not None and np.asarray(random_delta).size:
        r = np.asarray(random_delta, dtype=float)
        beats = [words[j] for i, j in pairs if RandomSpread.of(r[:, j]).exceeded_by(delta[i, j], "up")]
        out["beats_random"] = len(beats)
        out["beats_random_words"] = beats
        out["random_abs_max"] = float(np.abs(r).max())
        out["random_spread"] = RandomSpread.of(r).to_dict()
    return out


def feelings_matrices(model, tokenizer, vectors, emotions: Sequence[str], words: Sequence[str] | None = None,
                      strength: float = 0.5, layers: Sequence[int] | int | None = None,
                      prompts: Sequence[str] = ("he_feels", "i_feel", "what_happened"), n_random: int = 3,
                      seed: int = 0, system: str | None = None, rows: int = 64) -> FeelingsResult:
    """Steer with each emotion (and ``n_random`` random directions) at ``strength``; read every
    word's log-prob change after each prompt (``rows`` conditions side by side per forward pass)."""
    words = list(words) if words is not None else list(emotions)
    steerings = [vectors.steering(e, strength, layers=layers) for e in emotions]
    lay = steerings[0].layers
    rand = random_directions(vectors.width, n_random, seed)
    steerings += [vectors.steering(r, strength, layers=lay, label=n) for r, n in zip(rand, random_labels(n_random))]
    kinds = ["emotion"] * len(emotions) + ["random"] * n_random
    base: dict[str, list[float]] = {}
    delta: dict[str, np.ndarray] = {}
    n_tok: list[int] = []
    for name in prompts:
        fp = FEELING_PROMPTS[name]
        prompt, span = prompt_and_scope(tokenizer, fp, system)
        conts = word_ids(tokenizer, prompt, words)
        n_tok = n_tok or [len(c) for c in conts]
        # the baseline and every steered condition side by side, sharing the unsteered prefix
        lp = conditions_logprobs(model, prompt.ids, span, [None] + steerings, conts, rows).numpy()
        base[name] = lp[0].tolist()
        delta[name] = lp[1:] - lp[0]
    return FeelingsResult(prompts=list(prompts), words=words, directions=[s.label for s in steerings], kinds=kinds,
                          strength=float(strength), layers=lay, base=base, delta=delta, n_word_tokens=n_tok)


def sample_continuations(model, tokenizer, fp: FeelingPrompt | str, steering: Steering | None, n: int = 2,
                         max_new_tokens: int = 20, seed: int = 0, scope: str = "turn", temperature: float = 0.8,
                         system: str | None = None) -> list[str]:
    """``n`` sampled continuations of the prompt's prefill under ``steering``.

    ``scope="prefill"`` steers the paper's span only (assistant turn through the prefill);
    ``"turn"`` also steers every generated token, which small models need to show an effect in text.
    Sampling is seeded inside a forked RNG, so the caller's random state is untouched.
    """
    if scope not in ("prefill", "turn"):
        raise ValueError(f"scope must be 'prefill' or 'turn', got {scope!r}")
    fp = FEELING_PROMPTS[fp] if isinstance(fp, str) else fp
    prompt, span = prompt_and_scope(tokenizer, fp, system)
    sc: Any = span if scope == "prefill" else span[0]
    ids = torch.tensor([prompt.ids] * n)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        with apply_steering(model, steering, (sc,)):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=temperature, top_p=0.95, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
    return [fp.prefill + tokenizer.decode(o[len(prompt.ids):], skip_special_tokens=True) for o in out]


def plot_feelings(res: FeelingsResult, prompts: Sequence[str] | None = None):
    """One heat map per prompt: rows = steered vector (then random controls), columns = word."""
    import matplotlib.pyplot as plt

    prompts = list(prompts or res.prompts)
    fig, axes = plt.subplots(1, len(prompts), figsize=(4.6 * len(prompts), 4.4), squeeze=False)
    for ax, p in zip(axes[0], prompts):
        m = np.asarray(res.delta[p])
        lim = float(np.abs(m).max()) or 1.0
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(res.words)), res.words, rotation=90, fontsize=7)
        ax.set_yticks(range(len(res.directions)), res.directions, fontsize=7)
        for k, d in enumerate(res.directions):  # outline the diagonal (a vector and its own word)
            if d in res.words:
                j = res.words.index(d)
                ax.add_patch(plt.Rectangle((j - 0.5, k - 0.5), 1, 1, fill=False, ec="k", lw=0.8))
        ax.set_xlabel("emotion word", fontsize=8)
        ax.set_ylabel("steered with", fontsize=8)
        s = res.summary(p)
        ax.set_title(f"{FEELING_PROMPTS[p].prefill!r}: diag wins {s['column_wins']}/{s['n']}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, label="delta log p")
    fig.suptitle(f"Emotion-word log-prob change under steering (strength {res.strength:.2f}, layer(s) {res.layers})")
    fig.tight_layout()
    return fig
