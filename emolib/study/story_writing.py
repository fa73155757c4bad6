"""Stage 01's read-outs of a generated corpus: what the filter kept and why, lengths, samples, numbers.

The writing itself is :func:`emolib.study.generation.generate_corpus`; this module turns its
:class:`~emolib.study.generation.CorpusRun` into the tables, figures ``(fig, data)`` and metric rows
the notebook shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emolib.emotions import WORKING_12
from emolib.study.corpus import filter_table, load_corpus
from emolib.study.texts import distinct_n


def writer_engine(stage, writer: str | None, model: str, engine: str, workers: int, gpus_per_worker: float):
    """The writer (a model in this process, or an engine holding it) and the subject model's token counter."""
    from emolib.engines import make_engine
    from emolib.models import load_model, load_tokenizer
    from emolib.steering import assert_no_hooks

    spec = writer or model
    dev, dt = stage.params.get("device"), stage.params.get("dtype")
    eng = make_engine(engine, spec, workers=workers, gpus_per_worker=gpus_per_worker, device=dev, dtype=dt)
    with stage.timed("load writer"):
        if eng is None:
            wmodel, wtok, winfo = load_model(spec, device=dev, dtype=dt)
            assert_no_hooks(wmodel)
        else:  # the engine's workers hold the writer; this process needs only its tokenizer (for the plan)
            wmodel = None
            wtok, winfo = eng.describe()
    subject = wtok if spec == model else load_tokenizer(model)
    return wmodel, wtok, winfo, eng, subject


def filter_summary(corpus, emotions: Sequence[str]) -> tuple[Any, dict[str, Any], str]:
    """The per-emotion kept/drop table, the totals, and one line that says it."""
    table = filter_table(corpus.stories)
    reasons = [c for c in table.columns if c not in ("total", "kept")]
    kept = table["kept"].reindex(list(emotions)).fillna(0).astype(int)
    n_kept, n_total = int(table["kept"].sum()), int(table["total"].sum())
    trimmed = sum(bool((r["gen"] or {}).get("trimmed")) for r in corpus.stories if r["kept"])
    totals = {"n_kept": n_kept, "n_total": n_total, "reasons": reasons, "kept_per_emotion": kept,
              "by_reason": {r: int(table[r].sum()) for r in reasons}, "trimmed": trimmed}
    line = (f"stories parsed: {n_total}; kept: {n_kept} ({n_kept / max(n_total, 1):.0%}); kept per emotion: min "
            f"{kept.min()}, median {kept.median():.0f}, max {kept.max()}; emotions with none kept: {int((kept == 0).sum())}; "
            f"drop reasons: {totals['by_reason']}; kept stories cut back to a full sentence: {trimmed}")
    return table, totals, line


def filter_figure(table, totals: dict[str, Any]):
    import matplotlib.pyplot as plt

    reasons = totals["reasons"]
    kept = totals["kept_per_emotion"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 3]})
    colours = dict(zip(reasons, [plt.cm.tab10.colors[i] for i in (1, 3, 4, 5, 6, 8, 9, 0, 7)]))  # green = kept
    bars = axes[0].bar(["kept"] + reasons, [totals["n_kept"]] + [totals["by_reason"][r] for r in reasons],
                       color=["tab:green"] + [colours[r] for r in reasons])
    axes[0].bar_label(bars, fontsize=8)
    axes[0].set(ylabel="stories", title="all emotions")
    axes[0].tick_params(axis="x", rotation=60)
    order = kept.sort_values().index.tolist()
    bottom = np.zeros(len(order))
    for name, colour in [("kept", "tab:green")] + [(r, colours[r]) for r in reasons]:
        vals = table[name].reindex(order).fillna(0).to_numpy()
        axes[1].bar(range(len(order)), vals, bottom=bottom, color=colour, width=1.0, label=name)
        bottom += vals
    axes[1].set(xlim=(-0.5, len(order) - 0.5), xlabel="emotion (sorted by stories kept)", ylabel="stories per emotion")
    axes[1].yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[1].legend(fontsize=8, ncol=len(reasons) + 1, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if len(order) <= 30:
        axes[1].set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    fig.tight_layout()
    data = {"emotions": order, "per_emotion": {n: table[n].reindex(order).fillna(0).astype(int).tolist()
                                               for n in ["total", "kept"] + reasons},
            "totals": dict(kept=totals["n_kept"], **totals["by_reason"])}
    return fig, data


def length_figure(corpus, count_tokens, model_name: str):
    """Lengths (subject-model tokens) of kept and dropped stories beside the reference corpus."""
    import matplotlib.pyplot as plt

    kept = [r for r in corpus.stories if r["kept"]]
    dropped = [r for r in corpus.stories if not r["kept"]]
    reference = load_corpus("reference")
    lengths = {"kept": [count_tokens(r["text"]) for r in kept], "dropped": [count_tokens(r["text"]) for r in dropped],
               "reference": [count_tokens(r["text"]) for r in reference]}
    fig, ax = plt.subplots(figsize=(7, 3.4))
    bins = np.linspace(0, max(max(v) if v else 1 for v in lengths.values()) + 1, 40)
    for name, colour in [("reference", "tab:gray"), ("dropped", "tab:red"), ("kept", "tab:green")]:
        if lengths[name]:
            style = dict(alpha=0.5) if name == "reference" else dict(histtype="step", linewidth=1.8)
            ax.hist(lengths[name], bins=bins, color=colour, label=f"{name} (n={len(lengths[name])})", density=True, **style)
    ax.axvline(50, color="k", ls="--", lw=1)
    ax.text(51, ax.get_ylim()[1] * 0.9, "pooling starts", fontsize=8)
    ax.set(xlabel=f"tokens ({model_name} tokenizer)", ylabel="density")
    ax.legend(fontsize=8)
    fig.tight_layout()

    def mean_d2(recs):
        by_e: dict[str, list[str]] = {}
        for r in recs:
            by_e.setdefault(r["emotion"], []).append(r["text"])
        return float(np.mean([distinct_n(t, 2) for t in by_e.values()])) if by_e else None

    data = {**lengths, "median": {k: (float(np.median(v)) if v else None) for k, v in lengths.items()},
            "distinct2": {"generated (kept)": mean_d2(kept), "reference": mean_d2(reference)}}
    return fig, data


def sample_lines(corpus, emotions: Sequence[str], seed: int = 0, per: int = 2) -> list[str]:
    """Two kept stories (and a dropped one with its reason) for each working emotion present."""
    rng = np.random.default_rng(seed)
    out = []
    for e in [e for e in WORKING_12 if e in emotions] or list(emotions)[:4]:
        ks = [r for r in corpus.stories if r["emotion"] == e and r["kept"]]
        ds = [r for r in corpus.stories if r["emotion"] == e and not r["kept"]]
        out.append(f"=== {e}: {len(ks)} kept, {len(ds)} dropped")
        for r in [ks[i] for i in rng.permutation(len(ks))[:per]]:
            out.append(f"  [kept, {r['person']} person, topic: {r['topic']}]\n  {r['text'][:700]}\n")
        for r in ds[:1]:
            out.append(f"  [DROPPED: {r['drop_reason']}]\n  {r['text'][:300]}\n")
    return out


def rows(totals: dict[str, Any], corpus, thr: dict[str, Any], emotions: Sequence[str], n_topics: int,
         samples_per_topic: int, stories_per_prompt: int, batch_size: int, threads: int, device: str
         ) -> list[dict[str, Any]]:
    kept = totals["kept_per_emotion"]
    n_kept, n_total = totals["n_kept"], totals["n_total"]
    share = n_topics * samples_per_topic * stories_per_prompt / 1200
    nk = [r for r in corpus.neutral if r["kept"]]
    return [
        {"key": "stories_kept", "label": "stories kept (all emotions)", "ours": n_kept, "paper": "~205,200 generated",
         "note": f"{n_kept} of {n_total} parsed stories passed the checks"},
        {"key": "kept_fraction", "label": "fraction of parsed stories kept", "ours": round(n_kept / max(n_total, 1), 3),
         "paper": None, "note": "a 7B writer in one reproduction kept 62%"},
        {"key": "kept_per_emotion_min", "label": "stories kept per emotion, minimum", "ours": int(kept.min()),
         "paper": 1200, "note": f"over {len(emotions)} emotions; median {kept.median():.0f}"},
        {"key": "emotions_without_stories", "label": "emotions with no kept story", "ours": int((kept == 0).sum()),
         "paper": 0, "note": "02 cannot build a vector from the generated corpus for these"},
        {"key": "scale_vs_paper", "label": "stories asked per emotion / paper's 1,200", "ours": round(share, 4),
         "paper": 1.0, "note": f"{n_topics} topics x {samples_per_topic} x {stories_per_prompt} per prompt"},
        {"key": "names_emotion_rate", "label": "share of parsed stories naming their emotion",
         "ours": round(totals["by_reason"].get("names_emotion", 0) / max(n_total, 1), 3), "paper": None,
         "note": "the leakage filter's catch"},
        {"key": "kept_trimmed", "label": "kept stories cut back to a full sentence", "ours": totals["trimmed"],
         "paper": None, "note": "the writer hit max_new_tokens; trim_cut keeps their complete sentences"},
        {"key": "neutral_kept", "label": "neutral dialogues kept", "ours": len(nk), "paper": None,
         "note": "paper does not give its count; reproductions use 1,200"},
        {"key": "gen_tokens_per_s", "label": "generation throughput (new tokens/s)",
         "ours": round(thr["tokens_per_second"], 1) if thr.get("tokens_per_second") else None, "paper": None,
         "note": f"batch {batch_size}, {threads} thread(s), {device}"},
    ]


def writes_own_stories(winfo, writer: str | None) -> tuple[bool, str]:
    """Whether this run has the subject model write its own stories, and one line saying why not.

    A base model (no chat template) cannot follow the story-writing instruction; what it would continue
    the prompt with is not a story with a hidden emotion, so its own stories are not generated and 02
    reads the reference corpus alone. A base model as the subject with a separate instruct ``writer``
    is fine.
    """
    if winfo.has_chat_template or writer:
        return True, ""
    return False, (f"{winfo.name} is a base model (no chat template, prompts in the plain Human:/Assistant: "
                   "format): it cannot follow the story prompt, so its own stories are not generated or used; "
                   "02 builds the vectors from the reference corpus.")
