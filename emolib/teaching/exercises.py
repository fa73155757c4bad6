"""The six exercises: what each asks, where its answer lives in emolib, how it is tested and shown.

The answers are not written here. Each exercise names library functions (``"emolib.capture:pool_mask"``)
whose bodies carry nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers; the teacher
notebook copies their source, and the student notebook is that with the marked lines replaced by
``raise NotImplementedError()``. Fix a bug in the library and the assignment follows.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


@dataclass(frozen=True)
class TestCell:
    """One autograded cell: ``code`` calls a check from :mod:`emolib.teaching.checks`."""

    name: str
    points: int
    code: str


@dataclass(frozen=True)
class Exercise:
    number: int
    slug: str
    title: str
    level: str
    minutes: int
    functions: tuple[str, ...]  # "module:function" of the library answers, in cell order
    explain: str  # markdown
    hint: str  # markdown
    tests: tuple[TestCell, ...]
    demo: str  # code of the provided cell that draws this exercise's figure

    @property
    def points(self) -> int:
        return sum(t.points for t in self.tests)

    def answer_functions(self) -> list[Callable]:
        out = []
        for ref in self.functions:
            mod, name = ref.split(":")
            out.append(getattr(importlib.import_module(mod), name))
        return out

    def answer_source(self) -> str:
        """The library source of the answer functions (decorators included), markers and all."""
        parts = []
        for fn in self.answer_functions():
            src = inspect.getsource(fn)  # follows __wrapped__, so a @contextmanager keeps its decorator line
            if BEGIN not in src or END not in src:
                raise ValueError(f"{fn.__module__}.{fn.__name__} has no {BEGIN!r}/{END!r} markers: the exercise "
                                 "would hand out the whole answer.")
            parts.append(src.rstrip() + "\n")
        return "\n\n".join(parts)


EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        1, "pool_mask", "Which tokens to average: pooling from token 50 under padding", "easy", 15,
        ("emolib.capture:pool_mask",),
        explain="""\
The paper averages a story's residual-stream activations **from token 50 on**: by then the model
has read enough to know the story's emotion. Stories have different lengths, so a batch is
*padded*; `attention_mask` is 1 on real tokens and 0 on padding. Batched generation pads on the
**left**, so a row's text can start at position 3 of the tensor.

Write `pool_mask(attention_mask, start)`: a boolean tensor of the same shape, True where the
position is a real token **and** at least `start` real tokens come before it in its own text.""",
        hint="""\
`attention_mask.cumsum(dim=-1) - 1` is 0 at each row's first real token, 1 at the next, ... and
stays at -1 over left padding. Combine it with the mask itself so right padding is excluded too.""",
        tests=(
            TestCell("right-padding", 2, "checks.pool_mask_right_padding(pool_mask)"),
            TestCell("left-padding", 5, "checks.pool_mask_left_padding(pool_mask)"),
            TestCell("short-texts", 3, "checks.pool_mask_short_texts(pool_mask)"),
        ),
        demo="demo.attempt(1, demo.show_pool_mask, cls, pool_mask)",
    ),
    Exercise(
        2, "vectors", "Emotion vectors by grand-mean centring", "easy", 20,
        ("emolib.vectors:emotion_means", "emolib.vectors:grand_mean_center"),
        explain="""\
Each story is now one vector (its pooled mean). An **emotion vector** is the mean over that
emotion's stories, minus the **grand mean**: the mean of the emotion means. Centring removes what
every story shares (being a story, in English, about people), leaving what makes *afraid* differ
from *calm*. Each emotion weighs the same in the grand mean, however many stories it has.

1. In `emotion_means`, fill `out` (one mean per emotion, in the order of `names`) and `counts`.
   Stories whose row holds NaN were too short to pool: leave them out. An emotion with no usable
   story must raise `ValueError`.
2. In `grand_mean_center`, compute the grand mean `g` over the emotion axis `dim`.""",
        hint="""\
`ok[i]` already says whether story `i` is usable. For each emotion, collect the row indices with
that label and `ok`, then `x[rows].mean(dim=0)`. For the grand mean keep the axis
(`keepdim=True`) so `m - g` broadcasts.""",
        tests=(
            TestCell("means", 4, "checks.emotion_means_basic(emotion_means)"),
            TestCell("missing-emotion", 2, "checks.emotion_means_missing(emotion_means)"),
            TestCell("centring", 4, "checks.grand_mean_center_check(grand_mean_center)"),
        ),
        demo="demo.attempt(2, demo.show_vectors, cls, emotion_means, grand_mean_center)",
    ),
    Exercise(
        3, "denoise", "Denoising: projecting out the neutral principal components", "medium", 25,
        ("emolib.vectors:n_components_for", "emolib.vectors:project_out"),
        explain="""\
Emotion vectors also pick up directions that vary in *any* text: topic, length, format. The paper
finds them from **emotionally neutral** dialogues: their top principal components, enough to
explain 50 % of the neutral variance, are projected out of every emotion vector.

1. `n_components_for(ratios, threshold)`: the smallest `k` whose top-`k` explained-variance
   ratios sum to **at least** `threshold` (0 for threshold 0; all of them if the sum never gets there).
2. `project_out(v, basis)`: remove from `v` (`[..., width]`) its component in the span of the
   `k` orthonormal rows of `basis` (`[k, width]`).""",
        hint="""\
`torch.cumsum` gives the running totals. With orthonormal rows, the projection of `v` on their
span is `(v @ B.T) @ B`.""",
        tests=(
            TestCell("fifty-percent-rule", 4, "checks.n_components_for_check(n_components_for)"),
            TestCell("projection", 6, "checks.project_out_check(project_out)"),
        ),
        demo="demo.attempt(3, demo.show_denoising, cls, n_components_for, project_out)",
    ),
    Exercise(
        4, "readout", "Reading the vectors at the assistant-header token", "medium", 20,
        ("emolib.vectors:cosine_similarity",),
        explain="""\
To ask what the model "feels" about a user's message, the paper reads the residual stream at the
**assistant-header token**: the last token before the reply (for ChatML, the newline after
`<|im_start|>assistant`), where the model has read the whole message and is about to answer.
`emolib.chat.format_user_turn(tok, text).header_index` finds it; the figure below uses it.

Write `cosine_similarity(acts, vectors)`: the cosine of each activation (`[..., width]`) with each
vector (`[n, width]`), shape `[..., n]`. Cosine, not dot product: residual norms vary a lot.""",
        hint="""\
Divide each activation and each vector by its norm (`.norm(dim=-1, keepdim=True)`, clamped away
from zero), then one matrix product.""",
        tests=(
            TestCell("cosine", 6, "checks.cosine_similarity_check(cosine_similarity)"),
            TestCell("not-a-dot-product", 4, "checks.header_readout_ranking(cosine_similarity)"),
        ),
        demo="demo.attempt(4, demo.show_readout, cls, cosine_similarity)",
    ),
    Exercise(
        5, "steering", "A steering hook as a context manager", "medium", 30,
        ("emolib.steering:add_vector",),
        explain="""\
Reading is correlation; **steering** tests cause. Adding a multiple of an emotion vector to the
residual stream at one block, at every position, should push the model's text toward that
emotion. In PyTorch that is a *forward hook* on the block; it must come off again, or every later
cell runs a steered model without knowing it.

Write the body of `add_vector(model, layer, delta)`: register a forward hook on `block` that adds
`delta` to the block's output, `yield`, and remove the hook in a `finally:`. A block may return a
tensor or a tuple whose first item is the hidden state; return the same kind of thing.""",
        hint="""\
`handle = block.register_forward_hook(hook)`, where `hook(module, args, output)` returns the new
output; `handle.remove()` takes it off. Move `delta` to the output's device and dtype.""",
        tests=(
            TestCell("adds-delta", 6, "checks.add_vector_adds(add_vector)"),
            TestCell("cleans-up", 4, "checks.add_vector_cleans_up(add_vector)"),
        ),
        demo="demo.attempt(5, demo.show_steering, cls, add_vector)",
    ),
    Exercise(
        6, "preferences", "Preferences from A/B logits, and their Elo ratings", "hard", 40,
        ("emolib.study.scoring:option_probs", "emolib.study.preferences:fit_bradley_terry"),
        explain="""\
The paper asks *"Would you prefer to (A) ... or (B) ...?"* for pairs of activities and reads the
next-token probabilities of `A` and `B`: no sampling, no parsing. The pairs are then turned into
one score per activity with a **Bradley-Terry** model, `P(first chosen) = sigmoid(s_first -
s_second + bias)`, reported on the Elo scale. `bias` absorbs the model's taste for whichever
option comes first; each pair is asked in both orders so it can be told apart from the scores.

1. `option_probs(option_lp)`: from the log-probabilities `[n, 2]` of the two letters, return the
   probabilities renormalised over the two options and the probability mass on them.
2. In `fit_bradley_terry`, write `loss(theta)`: the negative log-likelihood of the soft outcomes
   `p` plus the ridge `0.5 * l2 * sum(s**2)`, **and its gradient**; the optimiser is given.""",
        hint="""\
With `z = s[f] - s[g] + b`, the loss of one comparison is `softplus(z) - p*z`
(`np.logaddexp(0, z) - p*z`, stable for large |z|) and its derivative is `sigmoid(z) - p`. Add it
to `grad[f]`, subtract it from `grad[g]` (`np.add.at` handles repeated indices) and sum it for
the bias.""",
        tests=(
            TestCell("option-probs", 3, "checks.option_probs_check(option_probs)"),
            TestCell("recovers-scores", 5, "checks.bradley_terry_recovers(fit_bradley_terry)"),
            TestCell("position-bias", 2, "checks.bradley_terry_bias(fit_bradley_terry)"),
        ),
        demo="demo.attempt(6, demo.show_elo, cls, option_probs, fit_bradley_terry)",
    ),
)


def exercise(number: int) -> Exercise:
    for ex in EXERCISES:
        if ex.number == number:
            return ex
    raise KeyError(f"No exercise {number}; there are {[e.number for e in EXERCISES]}.")
