"""Stage 02: from stories to emotion vectors at every layer, the layer sweep, and the artifact.

The steps the notebook calls, in order (the paper's method): :func:`load_stories` and :func:`pool_stories`
(pooled block outputs from token 50, resumable shards), :func:`neutral_basis` (principal components
of neutral dialogues, the 50 % rule), :func:`build_vectors` (emotion means minus their mean, with
the neutral components projected out), :func:`sweep` (held-out classification at every layer and
the default layer), :func:`save_vectors` (the self-describing safetensors file and a llama.cpp
control vector), and :func:`compare_own_stories` (vectors from the model's own stories against the
reference corpus). Each figure function returns ``(figure, data)`` for :meth:`Stage.show`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emolib.emotions import POST_TRAINING_EXTRA, PREFERENCE_EXTRA, WORKING_12, all_emotions, emotion_subset
from emolib.study.activations import (
    PooledCorpus,
    activations_folder,
    cached_token_moments,
    corpus_hash,
    corpus_sources,
    load_records,
    pool_corpus,
)
from emolib.study.layer_sweep import LayerSweep, choose_layer, compare_corpora, layer_sweep
from emolib.vectors import (
    EmotionVectors,
    NeutralPCA,
    compute_vectors,
    fit_neutral_pca,
    neutral_pca_from_moments,
    read_gguf_control_vector,
    remove_corpus_offsets,
)
from emolib.version import __version__


@dataclass
class Stories:
    """The stories the vectors are built from, pooled: ``x [n, layers, width]`` in record order."""

    records: dict[str, list[dict[str, Any]]]
    pooled: dict[str, PooledCorpus]
    x: torch.Tensor
    labels: list[str]
    topics: list[Any]
    voices: list[str] | None
    emotions: list[str]
    norms: torch.Tensor
    offsets_removed: bool = False
    ids: list[str] = field(default_factory=list)

    @property
    def all_records(self) -> list[dict[str, Any]]:
        return [r for rs in self.records.values() for r in rs]

    def counts(self):
        """Stories per emotion and source (a small table for the notebook)."""
        import pandas as pd

        return pd.DataFrame({src: pd.Series([r["emotion"] for r in rs]).value_counts()
                             for src, rs in self.records.items()})


def load_stories(run, corpus: str, emotions: str | list[str] = "all") -> dict[str, list[dict[str, Any]]]:
    """Kept story records of each source of ``corpus`` (``"reference"``, ``"generated"``, ``"both"``)."""
    wanted = None if emotions == "all" else emotion_subset(emotions)
    return {src: load_records(src, run, "story", wanted) for src in corpus_sources(corpus)}


def pool_stories(stage, records: dict[str, list[dict[str, Any]]], *, start: int, batch_size: int, shard_size: int,
                 max_length: int, engine=None) -> Stories:
    """Pool every story at every block (resumable shards under ``<run>/activations``) and line them up."""
    mdl, tok, info = stage.model() if engine is None else (None, *engine.describe())
    model_id = f"{info.name}@{info.revision}"
    pooled = {}
    with stage.timed("pool stories"):
        for src, rs in records.items():
            pooled[src] = pool_corpus(mdl, tok, rs, activations_folder(stage.run, src, "story"), model_id=model_id,
                                      start=start, batch_size=batch_size, shard_size=shard_size,
                                      max_length=max_length, progress=True, desc=f"{src} stories", engine=engine)
    order = {e: i for i, e in enumerate(all_emotions())}
    st = _line_up(records, pooled)
    st.norms = torch.stack([pooled[src].residual_norms * len(rs) for src, rs in records.items()]).sum(0) / len(st.x)
    st.emotions = sorted(set(st.labels), key=lambda e: order.get(e, 10**6))
    return st


def _line_up(records: dict[str, list[dict[str, Any]]], pooled: dict[str, PooledCorpus]) -> Stories:
    """The stories of every source in one tensor, in record order, each writer's style offset removed
    when there are several (norms and emotions are the caller's to fill in)."""
    rows, labels, topics, voices, tags = [], [], [], [], []
    for src, rs in records.items():
        rows.append(pooled[src].means)
        labels += [r["emotion"] for r in rs]
        topics += [r.get("topic_id") for r in rs]
        voices += [r.get("voice") for r in rs]
        tags += [src] * len(rs)
    x = torch.cat(rows)
    if len(records) > 1:  # each writer adds a style offset of its own
        x, _ = remove_corpus_offsets(x, labels, tags)
    return Stories(records=records, pooled=pooled, x=x, labels=labels, topics=topics,
                   voices=voices if all(v is not None for v in voices) else None, emotions=[], norms=torch.empty(0),
                   offsets_removed=len(records) > 1, ids=[r["id"] for rs in records.values() for r in rs])


def load_pooled_stories(run, vectors: EmotionVectors) -> Stories:
    """The pooled stories a vectors file was built from, read back from the run's shards (no model).

    For analyses that need the stories and not only their means per emotion (the split-half noise
    ceilings of 04): the same sources, the same records, the same corpus-offset alignment.
    """
    from emolib.study.activations import load_pooled

    sources = (vectors.meta.get("corpus") or {}).get("sources") or ["reference"]
    records = {src: [r for r in load_records(src, run, "story") if r["emotion"] in set(vectors.emotions)]
               for src in sources}
    pooled = {src: load_pooled(activations_folder(run, src, "story"), [r["id"] for r in rs])
              for src, rs in records.items()}
    st = _line_up(records, pooled)
    st.emotions, st.norms = list(vectors.emotions), vectors.norms
    return st


def pooling_summary(stories: Stories) -> list[str]:
    """One line per source: stories, tokens, pooled tokens per story, too-short ones, speed."""
    out = []
    for src, p in stories.pooled.items():
        rate = p.meta["total_tokens"] / max(p.meta["seconds"], 1e-9)
        out.append(f"{src}: {len(p.ids)} stories, {p.meta['total_tokens']} tokens, "
                   f"{p.n_tokens[p.ok].float().mean():.0f} pooled tokens per story, {int((~p.ok).sum())} too short; "
                   f"{rate:.0f} tok/s when pooled")
    return out


def neutral_basis(stage, neutral_corpus: str, method: str, threshold: float, *, start: int, batch_size: int,
                  shard_size: int, max_length: int, engine=None) -> tuple[NeutralPCA | None, list[int], int]:
    """The neutral PCA (per token, or per dialogue), the components the 50 % rule removes per layer,
    and the number of dialogues. ``threshold <= 0`` turns denoising off."""
    mdl, tok, info = stage.model()
    layers = list(range(info.n_layers))
    model_id = f"{info.name}@{info.revision}"
    with stage.timed("neutral"):
        neutral = [r for src in corpus_sources(neutral_corpus) for r in load_records(src, stage.run, "neutral")]
        if threshold <= 0:
            pca = None
        elif method == "token":
            # one pass that keeps each token's contribution to the covariance; the per-dialogue
            # means are not needed for this method, so the dialogues are read once, not twice
            mom = cached_token_moments(mdl, tok, neutral,
                                       stage.run / "activations" / f"{neutral_corpus}_neutral_moments.safetensors",
                                       model_id=model_id, layers=layers, start=start, batch_size=batch_size,
                                       max_length=max_length)
            pca = neutral_pca_from_moments(mom.count, mom.total, mom.outer, layers, threshold=threshold)
        elif method == "dialogue":
            npool = [pool_corpus(mdl, tok, [r for r in neutral if r["corpus"] == src],
                                 activations_folder(stage.run, src, "neutral"), model_id=model_id, start=start,
                                 batch_size=batch_size, shard_size=shard_size, max_length=max_length,
                                 desc=f"{src} neutral", engine=engine)
                     for src in corpus_sources(neutral_corpus)]
            pca = fit_neutral_pca(torch.cat([p.means for p in npool]), layers, threshold=threshold,
                                  seed=stage.params.get("seed", 0))
        else:
            raise ValueError(f"neutral_pca must be 'token' or 'dialogue', got {method!r}")
    removed = pca.n_removed() if pca is not None else [0] * len(layers)
    if pca is not None:  # 04 rebuilds vectors from story halves for its noise ceilings: same denoising
        pca.save(stage.run / "neutral_pca.safetensors")
    return pca, removed, len(neutral)


def build_vectors(stage, stories: Stories, pca: NeutralPCA | None, threshold: float, corpus: str, neutral_corpus: str,
                  n_neutral: int, start: int, max_length: int) -> tuple[EmotionVectors, EmotionVectors, torch.Tensor]:
    """Raw and denoised vectors at every layer with their provenance, and cos(raw, denoised) ``[layers, emotions]``."""
    mdl, _, info = stage.model()
    layers = list(range(info.n_layers))
    recs = stories.all_records
    meta = {
        "stage": stage.name, "model": {**info.to_dict(), "spec": stage.params.get("model"),
                                       "model_type": getattr(mdl.config, "model_type", None)},
        "start": start, "max_length": max_length, "hook_site": "decoder_block_output",
        "corpus": {"name": corpus, "sources": list(stories.records), "hash": corpus_hash(recs), "n_stories": len(recs),
                   "n_emotions": len(stories.emotions), "writers": sorted({str(r.get("writer")) for r in recs}),
                   "voices": sorted({str(v) for v in stories.voices}) if stories.voices else None,
                   "offsets_removed": stories.offsets_removed},
        "neutral": {"corpus": neutral_corpus, "n_dialogues": n_neutral},
        "norms": "mean L2 norm of the block output over every story token except each story's first",
        "emolib_version": __version__,
    }
    raw = compute_vectors(stories.x, stories.labels, layers, stories.norms, emotions=stories.emotions, meta=meta)
    vec = compute_vectors(stories.x, stories.labels, layers, stories.norms, emotions=stories.emotions, neutral=pca,
                          threshold=threshold, meta=meta)
    return raw, vec, torch.nn.functional.cosine_similarity(raw.vectors, vec.vectors, dim=-1)


def sweep(stage, stories: Stories, pca: NeutralPCA | None, threshold: float, *, n_folds: int, probe_every: int,
          probe_C: float, layer_frac: float, layer_depth: float, layer: int | None,
          n_voice_groups: int = 3) -> tuple[LayerSweep, int, int]:
    """Held-out accuracy at every block (folds disjoint in topic and, when the corpus records it, voice),
    the block the plateau rule picks, and the default layer (``layer`` forces one)."""
    _, _, info = stage.model()
    layers = list(range(info.n_layers))
    probe_layers = layers[::probe_every] if probe_every else []
    seed = stage.params.get("seed", 0)
    with stage.timed("layer sweep"):
        res = layer_sweep(stories.x, stories.labels, stories.topics, layers, pca=pca, threshold=threshold,
                          n_folds=n_folds, probe_layers=probe_layers, probe_C=probe_C, seed=seed,
                          voices=stories.voices, n_voice_groups=n_voice_groups)
    method = "denoised" if pca is not None else "raw"
    chosen = choose_layer(res, info.n_layers, method=method, frac=layer_frac, depth=layer_depth)
    default = chosen if layer in (-1, None) else int(layer)
    if probe_every and default not in res.probe_layers:  # the probe at the default layer too, for the headline
        with stage.timed("layer sweep"):
            extra = layer_sweep(stories.x[:, [default]], stories.labels, stories.topics, [default], n_folds=n_folds,
                                probe_layers=[default], probe_C=probe_C, seed=seed, voices=stories.voices,
                                n_voice_groups=n_voice_groups)
        i = layers.index(default)
        res.top1["probe"][i], res.top5["probe"][i] = extra.top1["probe"][0], extra.top5["probe"][0]
        res.probe_layers = sorted(res.probe_layers + [default])
    return res, chosen, default


def sweep_table(res: LayerSweep, n_removed: list[int], cos_raw_den: torch.Tensor):
    import pandas as pd

    return pd.DataFrame({"layer": res.layers, "raw top-1": res.top1["raw"], "denoised top-1": res.top1["denoised"],
                         "denoised top-5": res.top5["denoised"], "probe top-1": res.top1["probe"],
                         "PCs removed": n_removed, "cos(raw, denoised)": cos_raw_den.mean(1).numpy()}
                        ).round(3).set_index("layer").T


def sweep_figure(res: LayerSweep, default: int, chosen: int, model_name: str, folds_label: str):
    import matplotlib.pyplot as plt

    layers = res.layers
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    ax.plot(layers, res.top1["raw"], "o-", ms=3, label="nearest vector, raw: top-1")
    if not np.isnan(res.top1["denoised"]).all():
        ax.plot(layers, res.top1["denoised"], "o-", ms=3, label="nearest vector, denoised: top-1")
        ax.plot(layers, res.top5["denoised"], "--", label="nearest vector, denoised: top-5")
    if res.probe_layers:
        ax.plot(res.probe_layers, [res.top1["probe"][layers.index(x)] for x in res.probe_layers], "s:", ms=3,
                label="logistic probe: top-1")
    ax.axhline(res.chance_top1, color="grey", lw=1, ls=":", label=f"chance top-1 ({res.chance_top1:.1%})")
    ax.axhline(res.chance_top5, color="grey", lw=1, ls="-.", label=f"chance top-5 ({res.chance_top5:.1%})")
    drawn = [v for line in ax.get_lines() for v in np.asarray(line.get_ydata(), dtype=float) if np.isfinite(v)]
    ax.axvline(default, color="k", lw=0.8, label=f"default layer (block {default})")
    ax.set(xlabel="block", ylabel="held-out accuracy", ylim=(0, min(1.0, 1.15 * max(drawn))),
           title=f"{len(res.emotions)}-way emotion of unseen stories ({folds_label}), {model_name}")
    ax.legend(fontsize=7, loc="upper left")
    return fig, {**res.to_dict(), "default_layer": default, "chosen_by_rule": chosen, "folds": folds_label}


def denoising_figure(layers: list[int], n_removed: list[int], cos_raw_den: torch.Tensor, threshold: float,
                     pca_mode: str | None):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
    axes[0].bar(layers, n_removed, color="tab:purple")
    axes[0].set(xlabel="block", ylabel="components removed", title=f"neutral PCs for {threshold:.0%} of variance")
    axes[1].plot(layers, cos_raw_den.mean(1), "o-", ms=3, label="mean over emotions")
    axes[1].fill_between(layers, cos_raw_den.min(1).values, cos_raw_den.max(1).values, alpha=0.2, label="min-max")
    axes[1].set(xlabel="block", ylabel="cosine", ylim=(0, 1.02), title="raw vs denoised vectors")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig, {"layers": layers, "n_removed": n_removed, "pca_mode": pca_mode, "cos_mean": cos_raw_den.mean(1),
                 "cos_min": cos_raw_den.min(1).values, "cos_max": cos_raw_den.max(1).values}


def subset_check(stage, stories: Stories, pca, threshold: float, default: int, n_folds: int):
    """The same held-out sweep on 20 familiar emotions (the working 12 and the 8 the paper adds), for scale.

    Returns ``(one-line summary, per-layer table, metric rows)``; nothing when fewer than 3 are present.
    """
    import pandas as pd

    subset = [e for e in (*WORKING_12, *PREFERENCE_EXTRA, *POST_TRAINING_EXTRA) if e in set(stories.labels)]
    if len(subset) < 3:
        return "fewer than 3 of the 20 emotions: skipped", None, []
    rows = [i for i, e in enumerate(stories.labels) if e in set(subset)]
    layers = list(range(stories.x.shape[1]))
    method = "denoised" if pca is not None else "raw"
    with stage.timed("20-emotion check"):
        res = layer_sweep(stories.x[rows], [stories.labels[i] for i in rows], [stories.topics[i] for i in rows], layers,
                          pca=pca, threshold=threshold, n_folds=n_folds, probe_layers=[],
                          seed=stage.params.get("seed", 0),
                          voices=[stories.voices[i] for i in rows] if stories.voices else None)
    best = layers[int(np.nanargmax(res.top1[method]))]
    at = res.at(default)
    line = (f"{len(subset)}-way: top-1 {at[method + '_top1']:.3f} at the default block {default}; best "
            f"{np.nanmax(res.top1[method]):.3f} at block {best} (chance {res.chance_top1:.3f})")
    table = pd.DataFrame({"layer": layers, f"{len(subset)}-way top-1": res.top1[method]}).round(3).set_index("layer").T
    return line, table, [{"key": "heldout_top1_20way", "label": f"held-out top-1, {len(subset)}-way subset, default layer",
                          "ours": at[method + "_top1"], "paper": None,
                          "note": f"chance {res.chance_top1:.3f}; best {np.nanmax(res.top1[method]):.3f} at block {best}"}]


def save_vectors(stage, vec: EmotionVectors, res: LayerSweep, chosen: int, default: int, *, n_folds: int,
                 layer_frac: float, layer_depth: float, gguf_direction: str = "") -> tuple[EmotionVectors, Any]:
    """Write ``<run>/vectors.safetensors`` (read back and checked) and, if asked, a llama.cpp control vector."""
    _, _, info = stage.model()
    method = "denoised" if not np.isnan(res.top1["denoised"]).all() else "raw"
    vec.meta["layer_sweep"] = {"rule": f"plateau (smoothed {method} top-1 >= {layer_frac} x best) closest to "
                                       f"{layer_depth:.3f} x {info.n_layers} blocks", "chosen_by_rule": chosen,
                               "n_folds": res.n_folds, "n_test": res.n_test, "n_emotions": len(res.emotions),
                               "at_default": res.at(default)}
    vec = vec.with_default_layer(default)
    path = vec.save(stage.run / "vectors.safetensors")
    back = EmotionVectors.load(path)
    assert torch.equal(back.vectors, vec.vectors) and back.emotions == vec.emotions and back.default_layer == default
    print(f"saved {path.relative_to(stage.run.parent) if stage.run.parent in path.parents else path}: "
          f"{tuple(vec.vectors.shape)} (layers, emotions, width), default layer {default}")
    gguf = None
    if gguf_direction:
        try:
            d = vec.direction(gguf_direction)
        except KeyError as err:
            print(f"GGUF export skipped: {err}")
        else:
            name = gguf_direction.replace(" ", "").replace("*", "x")
            gguf = vec.to_gguf(stage.run / "gguf" / f"{name}_L{default}.gguf", gguf_direction, layers=[default])
            dirs, _ = read_gguf_control_vector(gguf)
            assert torch.allclose(dirs[default], vec.norm_at() * d / d.norm(), atol=1e-5)
            print(f"llama.cpp control vector: {gguf.name} (direction.{default}, norm {float(dirs[default].norm()):.2f}"
                  " = mean residual norm at that block)")
    return vec, gguf


def compare_own_stories(stage, stories: Stories, pca, threshold: float, default: int, emotions, *, start: int,
                        batch_size: int, shard_size: int, max_length: int, engine=None):
    """Vectors from the model's own stories (01) against the reference corpus, on the emotions they share.

    Returns the comparison, or None when 01 wrote no stories in this run (with the reason printed).
    """
    mdl, tok, info = stage.model()
    wanted = None if emotions == "all" else emotion_subset(emotions)
    try:
        other = {src: load_records(src, stage.run, "story", wanted) for src in ("generated", "reference")
                 if src not in stories.records}
    except FileNotFoundError as err:
        print(f"comparison skipped: {err}")
        return None
    both = {**stories.records, **other}
    with stage.timed("comparison"):
        pb = {src: stories.pooled[src] if src in stories.pooled else pool_corpus(
                  mdl, tok, both[src], activations_folder(stage.run, src, "story"),
                  model_id=f"{info.name}@{info.revision}", start=start, batch_size=batch_size, shard_size=shard_size,
                  max_length=max_length, desc=f"{src} stories", engine=engine)
              for src in ("generated", "reference") if both.get(src)}
        if len(pb) < 2:
            print("comparison skipped: one corpus has no stories")
            return None
        try:
            return compare_corpora(pb["generated"].means, [r["emotion"] for r in both["generated"]],
                                   pb["reference"].means, [r["emotion"] for r in both["reference"]],
                                   list(range(info.n_layers)), default, pca=pca, threshold=threshold,
                                   name_a="generated", name_b="reference")
        except ValueError as err:
            print(f"comparison skipped: {err}")
            return None


def comparison_figure(c, default: int):
    import matplotlib.pyplot as plt

    li = c.layers.index(default)
    cosv = np.array(list(c.cosine.values()))
    print(f"{len(c.shared)} shared emotions; {c.n_a} generated and {c.n_b} reference stories; chance top-1 "
          f"{c.chance_top1:.3f}; block {default}: cosine(generated, reference) median {np.median(cosv):.2f}; "
          f"generated vectors on reference stories top-1 {c.a_on_b['top1'][li]:.3f}, reference on generated "
          f"{c.b_on_a['top1'][li]:.3f}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].hist(cosv, bins=20, color="tab:green")
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].set(xlabel="cosine", ylabel="emotions", title=f"generated vs reference vector, block {default}")
    axes[1].plot(c.layers, c.a_on_b["top1"], "o-", ms=3, label="generated vectors → reference stories")
    axes[1].plot(c.layers, c.b_on_a["top1"], "o-", ms=3, label="reference vectors → generated stories")
    axes[1].axhline(c.chance_top1, color="grey", ls=":", lw=1, label="chance")
    axes[1].axvline(default, color="k", lw=0.8, label=f"default layer (block {default})")
    top = max([c.chance_top1, *c.a_on_b["top1"], *c.b_on_a["top1"]])
    axes[1].set(xlabel="block", ylabel="top-1 accuracy", ylim=(0, min(1.0, max(0.05, 1.6 * top))),
                title=f"cross-corpus, {len(c.shared)}-way (y axis zoomed)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig, c.to_dict()


def headline_rows(res: LayerSweep, default: int, n_removed: list[int], cos_raw_den: torch.Tensor, pca, info,
                  comparison=None, folds_label: str = "") -> list[dict[str, Any]]:
    """The stage's numbers for the report."""
    method = "denoised" if pca is not None else "raw"
    at = res.at(default)
    li = res.layers.index(default)
    rows = [
        {"key": "default_layer", "label": "default layer (block, 0-based)", "ours": default, "paper": "about 2/3 depth",
         "note": f"of {info.n_layers} blocks; plateau rule in emolib.study.layer_sweep"},
        {"key": "heldout_top1", "label": f"held-out top-1, {len(res.emotions)}-way, nearest {method} vector",
         "ours": at[f"{method}_top1"], "paper": None,
         "note": f"{folds_label}; chance {res.chance_top1:.3f}; a Qwen3.5-9B reproduction reports 0.37 (171-way)"},
        {"key": "heldout_top5", "label": f"held-out top-5, {len(res.emotions)}-way", "ours": at[f"{method}_top5"],
         "paper": None, "note": f"chance {res.chance_top5:.3f}; the Qwen3.5-9B reproduction reports 0.74"},
        {"key": "heldout_top1_raw", "label": "held-out top-1, raw vectors", "ours": at["raw_top1"], "paper": None,
         "note": "before the neutral projection"},
        {"key": "probe_top1", "label": "held-out top-1, logistic-regression probe", "ours": at.get("probe_top1"),
         "paper": None, "note": "a trained read-out on the same pooled means"},
        {"key": "best_layer_top1", "label": f"best layer by {method} top-1",
         "ours": res.layers[int(np.nanargmax(res.top1[method]))], "paper": None,
         "note": f"top-1 {np.nanmax(res.top1[method]):.3f} there"},
        {"key": "pcs_removed", "label": "neutral PCs removed at the default layer", "ours": n_removed[li], "paper": None,
         "note": f"50 % rule, PCA on {pca.mode if pca else 'none'}; a Llama-3.1-8B reproduction reports 12"},
        {"key": "cos_raw_denoised", "label": "cosine(raw, denoised), mean over emotions",
         "ours": float(cos_raw_den[li].mean()), "paper": None, "note": "a Qwen2.5-0.5B reproduction reports about 0.86"},
    ]
    if comparison is not None:
        c = comparison
        rows += [
            {"key": "cross_gen_on_ref_top1", "label": f"generated vectors on reference stories, top-1 ({len(c.shared)}-way)",
             "ours": c.a_on_b["top1"][li], "paper": None, "note": f"chance {c.chance_top1:.3f}"},
            {"key": "cross_ref_on_gen_top1", "label": f"reference vectors on generated stories, top-1 ({len(c.shared)}-way)",
             "ours": c.b_on_a["top1"][li], "paper": None, "note": f"chance {c.chance_top1:.3f}"},
            {"key": "cross_cosine_median", "label": "cosine(generated, reference) per emotion, median",
             "ours": float(np.median(list(c.cosine.values()))), "paper": None, "note": f"block {default}"},
        ]
    return rows


def run_denoising(run, vectors: EmotionVectors) -> tuple[NeutralPCA | None, float]:
    """The neutral PCA and threshold the run's vectors were denoised with (``(None, 0.0)`` if they were not),
    so that vector sets built later (speaker probes, deflection vectors, split halves) are denoised alike."""
    from pathlib import Path

    den = vectors.meta.get("denoise") or {}
    path = Path(run) / "neutral_pca.safetensors"
    if not den or not path.exists():
        return None, 0.0
    return NeutralPCA.load(path), float(den.get("threshold", 0.5))
