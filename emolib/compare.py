"""Every result side by side across models: ``make compare`` (``python -m emolib.compare``).

One model cannot tell a property of SmolLM2-135M from a property of small models. This module runs the
default profile once per embedded model, each into its own run folder (the pipeline skips stages already
done, so a rerun only finishes what is missing), then reads the runs back and writes:

* ``<out>/COMPARE.md`` and ``compare.json``: every metric row of every stage's report, one column per model,
  with the paper's value where it has one;
* ``<out>/compare_models.png``: the layer-sweep curves on one relative-depth axis, where valence and
  arousal sit (|r| of PC1-5 with human ratings by relative depth) in each model, and how alike the two
  models' cosine matrices are at matched relative depth;
* the correlation of the two models' 171 x 171 cosine matrices at their default layers, and at matched
  relative depth;
* the same on disjoint halves of the stories (:func:`split_half_agreement`): both models read the same
  stories, so agreement on the same stories mixes shared geometry with shared stimulus noise; one
  model's half against the other model's other half, beside each model's own split-half reliability,
  separates the two.

The default model's run is the committed one (``runs/default``, figures in ``figures/``); the others go to
``runs/<alias>`` with their figures inside the run folder (not committed).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emolib.models import DEFAULT_MODEL, GEMMA_BASE_MODEL
from emolib.study.geometry import cosine_matrix, off_diagonal
from emolib.study.runs import REPO_ROOT

MODELS = (DEFAULT_MODEL, GEMMA_BASE_MODEL)


def run_folder(model: str) -> Path:
    """Where the default profile's run of ``model`` lives."""
    return REPO_ROOT / "runs" / ("default" if model == DEFAULT_MODEL else model)


def run_models(models: Sequence[str] = MODELS, force: bool = False) -> dict[str, float]:
    """Run (or finish) the default profile for each model; returns the wall time of each run's stages."""
    from emolib.pipeline import run_pipeline

    out = {}
    for m in models:
        print(f"== {m}: {run_folder(m)}", flush=True)
        if m == DEFAULT_MODEL:
            run_pipeline("default", force=force)
        else:
            run_pipeline("default", run=run_folder(m), sets=[f"model={m}"], force=force)
        out[m] = stage_seconds(run_folder(m))
    return out


def stage_seconds(run: Path) -> float:
    """The summed wall time of the stages recorded in a run folder (the runs that made its results)."""
    total = 0.0
    for p in sorted((run / "stages").glob("*.json")):
        total += float(json.loads(p.read_text()).get("seconds") or 0.0)
    return total


def metric_table(runs: dict[str, Path]):
    """Every metric row of every run, one column per model (rows matched by stage and key)."""
    import pandas as pd

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for model, run in runs.items():
        for p in sorted((run / "metrics").glob("*.json")):
            d = json.loads(p.read_text())
            for r in d.get("rows", []):
                key = (d.get("stage", p.stem), r["key"])
                row = rows.setdefault(key, {"stage": key[0], "key": r["key"], "label": r.get("label", r["key"]),
                                            "paper": r.get("paper")})
                row[model] = r.get("ours")
    df = pd.DataFrame(list(rows.values()))
    cols = ["stage", "label"] + list(runs) + ["paper", "key"]
    return df.reindex(columns=cols)


def cosine_agreement(a, b) -> dict[str, Any]:
    """Correlation of two models' cosine matrices on their shared emotions: at each model's default layer,
    and at matched relative depth (each block of ``a`` against the block of ``b`` nearest in depth)."""
    shared = [e for e in a.emotions if e in set(b.emotions)]
    va, vb = a.select(shared), b.select(shared)
    ca = {L: off_diagonal(cosine_matrix(va.at(L))) for L in va.layers}
    cb = {L: off_diagonal(cosine_matrix(vb.at(L))) for L in vb.layers}
    na, nb = max(va.layers), max(vb.layers)
    matched = []
    for L in va.layers:
        Lb = min(vb.layers, key=lambda x: abs(x / max(nb, 1) - L / max(na, 1)))
        matched.append({"depth": L / max(na, 1), "layer_a": L, "layer_b": Lb,
                        "r": float(np.corrcoef(ca[L], cb[Lb])[0, 1])})
    da, db = a.default_layer, b.default_layer
    return {"n_emotions": len(shared), "default": {"layer_a": da, "layer_b": db,
                                                   "r": float(np.corrcoef(ca[da], cb[db])[0, 1])},
            "matched": matched, "best": max(matched, key=lambda m: m["r"])}


def split_half_agreement(xa, xb, labels: Sequence[str], n_splits: int = 10, seed: int = 0) -> dict[str, Any]:
    """How much of two models' agreement is shared stimuli: cosine matrices from disjoint story halves.

    ``xa [n, width_a]`` and ``xb [n, width_b]`` are the same ``n`` stories pooled by each model at its
    default layer (rows aligned, ``labels`` their emotions). Each split halves every emotion's stories
    at random; the emotion vectors of a half are its means minus the mean over emotions (raw, not
    denoised). Returned, as means (and sd) over splits, the r of the off-diagonal cosine entries:
    ``within_a`` / ``within_b`` (each model's split-half reliability), ``across_disjoint`` (model a on
    one half vs model b on the other: agreement that cannot come from shared stories) and
    ``across_same`` (both models on the same half: what sharing the stories adds). ``ceiling`` is
    ``sqrt(within_a * within_b)``, the most ``across_disjoint`` can be if both models encode the
    same geometry, each with its own noise.
    """
    from emolib.study.reliability import half_indices, vectors_of

    xa, xb = torch.as_tensor(xa).float(), torch.as_tensor(xb).float()
    labels = np.asarray(labels)
    emos = sorted(set(labels.tolist()))
    rng = np.random.default_rng(seed)

    def cos_of(x, rows):
        return off_diagonal(cosine_matrix(vectors_of(x, labels, emos, rows)))

    def r(p, q):
        return float(np.corrcoef(p, q)[0, 1])

    acc: dict[str, list[float]] = {"within_a": [], "within_b": [], "across_disjoint": [], "across_same": []}
    for _ in range(n_splits):
        h1, h2 = half_indices(labels, emos, rng)  # one split, the same for both models
        a1, a2, b1, b2 = cos_of(xa, h1), cos_of(xa, h2), cos_of(xb, h1), cos_of(xb, h2)
        acc["within_a"].append(r(a1, a2))
        acc["within_b"].append(r(b1, b2))
        acc["across_disjoint"].append((r(a1, b2) + r(a2, b1)) / 2)
        acc["across_same"].append((r(a1, b1) + r(a2, b2)) / 2)
    out = {k: float(np.mean(v)) for k, v in acc.items()} | {f"{k}_sd": float(np.std(v)) for k, v in acc.items()}
    out["ceiling"] = float(np.sqrt(max(out["within_a"], 0) * max(out["within_b"], 0)))
    out["n_splits"], out["n_stories"], out["n_emotions"] = n_splits, len(labels), len(emos)
    return out


def stories_agreement(run_a: Path, run_b: Path, vec_a, vec_b, n_splits: int = 10, seed: int = 0) -> dict[str, Any] | None:
    """:func:`split_half_agreement` on the two runs' pooled reference stories at their default layers
    (None when a run kept no pooled stories or the two pooled different stories)."""
    from emolib.study.extraction import load_pooled_stories

    try:
        sa, sb = load_pooled_stories(run_a, vec_a), load_pooled_stories(run_b, vec_b)
    except (FileNotFoundError, KeyError, ValueError):
        return None
    pos = {k: i for i, k in enumerate(sb.ids)}
    if not sa.ids or any(k not in pos for k in sa.ids):
        return None
    order = [pos[k] for k in sa.ids]
    if [sb.labels[i] for i in order] != list(sa.labels):
        return None
    xa = sa.x[:, vec_a.layers.index(vec_a.default_layer)]
    xb = sb.x[order][:, vec_b.layers.index(vec_b.default_layer)]
    return split_half_agreement(xa, xb, sa.labels, n_splits=n_splits, seed=seed)


def valence_by_depth(vec, norms) -> dict[str, Any]:
    """|r| of PC1..PC5 with human valence and arousal at every layer (the 04 valence map), by relative depth."""
    from emolib.study.valence_map import rating_map

    emos = list(vec.emotions)
    rmap = rating_map(vec, {"valence": norms.values(emos, "valence"), "arousal": norms.values(emos, "arousal")})
    n = max(vec.layers)
    return {"depth": [L / max(n, 1) for L in vec.layers], "valence": np.asarray(rmap["abs_r"]["valence"]),
            "arousal": np.asarray(rmap["abs_r"]["arousal"])}


def figure(runs: dict[str, Path], vectors: dict[str, Any], agree: dict[str, Any] | None, norms_of):
    """Layer sweep on relative depth, valence/arousal best |r| over PC1-3 by depth, cosine-matrix agreement."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    data: dict[str, Any] = {"sweep": {}, "valence": {}, "agreement": agree}
    for m, run in runs.items():
        p = run / "layer_sweep.json"
        if p.exists():
            s = json.loads(p.read_text())["sweep"]
            n = max(s["layers"])
            depth = [L / max(n, 1) for L in s["layers"]]
            axes[0].plot(depth, s["top1"]["denoised"], marker=".", label=f"{m} ({len(s['emotions'])}-way)")
            data["sweep"][m] = {"depth": depth, "top1": s["top1"]["denoised"], "chance": s["chance_top1"]}
        if m in vectors and norms_of is not None:
            vb = valence_by_depth(vectors[m], norms_of(vectors[m].emotions))
            for dim, ls in (("valence", "-"), ("arousal", ":")):
                axes[1].plot(vb["depth"], vb[dim][:, :3].max(1), ls, marker=".", label=f"{m}: {dim}")
            data["valence"][m] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vb.items()}
    axes[0].set_xlabel("relative depth (block / last block)")
    axes[0].set_ylabel("held-out top-1 (denoised vectors)")
    axes[0].set_title("Layer sweep", fontsize=10)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("relative depth")
    axes[1].set_ylabel("best |r| over PC1-3")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Valence and arousal in the top PCs", fontsize=10)
    axes[1].legend(fontsize=7)
    if agree is not None:
        axes[2].plot([x["depth"] for x in agree["matched"]], [x["r"] for x in agree["matched"]], marker=".")
        axes[2].axhline(agree["default"]["r"], ls="--", color="grey",
                        label=f"default layers ({agree['default']['layer_a']} / {agree['default']['layer_b']}): "
                              f"r = {agree['default']['r']:.2f}")
        axes[2].legend(fontsize=7)
    axes[2].set_ylim(-0.1, 1)
    axes[2].set_xlabel("relative depth")
    axes[2].set_ylabel("r of the two cosine matrices")
    axes[2].set_title("Do the models arrange the emotions alike?", fontsize=10)
    fig.tight_layout()
    return fig, data


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def write_comparison(models: Sequence[str] = MODELS, out: str | Path = "figures/compare",
                     seconds: dict[str, float] | None = None) -> Path:
    """Read the runs of ``models`` back and write the table, the JSON and the figure into ``out``."""
    from emolib.study.runs import save_figure
    from emolib.vectors import EmotionVectors

    out = Path(out) if Path(out).is_absolute() else REPO_ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    runs = {m: run_folder(m) for m in models if (run_folder(m) / "metrics").exists()}
    missing = [m for m in models if m not in runs]
    if len(runs) < 2:
        raise SystemExit(f"Need finished runs of two models; have {list(runs) or 'none'}, missing {missing or 'none'} "
                         f"(asked for {list(models)}). Run `make compare` first.")
    vectors = {m: EmotionVectors.load(r / "vectors.safetensors") for m, r in runs.items()
               if (r / "vectors.safetensors").exists()}
    names = list(runs)
    agree = cosine_agreement(vectors[names[0]], vectors[names[1]]) if len(vectors) >= 2 else None
    halves = (stories_agreement(runs[names[0]], runs[names[1]], vectors[names[0]], vectors[names[1]])
              if agree is not None else None)
    try:
        from emolib.study.human_ratings import warriner_norms

        norms_of = warriner_norms
    except ImportError:
        norms_of = None
    fig, data = figure(runs, vectors, agree, norms_of)
    save_figure(fig, "compare_models", data=data, figures=out, stage="compare",
                caption="Two models side by side: layer sweep, valence/arousal in the top PCs, and the correlation "
                        "of their cosine matrices, all on relative depth.")
    table = metric_table(runs)
    secs = {m: stage_seconds(r) for m, r in runs.items()} | dict(seconds or {})
    lines = ["# Two models side by side", "",
             "Written by `make compare` from the runs " + ", ".join(f"`{r.relative_to(REPO_ROOT)}`" for r in
                                                                   runs.values()) + ".", "",
             "| model | run folder | wall time of its stages |", "|---|---|---|"]
    lines += [f"| {m} | `{r.relative_to(REPO_ROOT)}` | {secs.get(m, 0) / 60:.1f} min |" for m, r in runs.items()]
    if agree is not None:
        lines += ["", f"Cosine matrices over the {agree['n_emotions']} shared emotions: r = "
                      f"{agree['default']['r']:.3f} at the default layers (blocks {agree['default']['layer_a']} and "
                      f"{agree['default']['layer_b']}); best at matched relative depth {agree['best']['depth']:.2f} "
                      f"(blocks {agree['best']['layer_a']} / {agree['best']['layer_b']}): r = {agree['best']['r']:.3f}."]
    if halves is not None:
        lines += ["", f"Both models read the same {halves['n_stories']} stories, so part of that agreement is the "
                      "stories themselves. Split every emotion's stories in two halves at random "
                      f"({halves['n_splits']} splits; raw vectors, default layers): each model agrees with itself "
                      f"across halves at r = {halves['within_a']:.3f} ({names[0]}) and {halves['within_b']:.3f} "
                      f"({names[1]}); one model's half against the other model's *other* half gives "
                      f"r = {halves['across_disjoint']:.3f} (ceiling if both encode one geometry: "
                      f"{halves['ceiling']:.3f}), the same half {halves['across_same']:.3f}."]
    lines += ["", "![compare_models](compare_models.png)", "",
              "| stage | metric | " + " | ".join(names) + " | paper |", "|---|---|" + "---|" * (len(names) + 1)]
    for _, r in table.iterrows():
        lines.append(f"| {r['stage']} | {r['label']} | " + " | ".join(_fmt(r[m]) for m in names)
                     + f" | {_fmt(r['paper'])} |")
    (out / "COMPARE.md").write_text("\n".join(lines) + "\n")
    (out / "compare.json").write_text(json.dumps({"models": names, "seconds": secs, "agreement": agree,
                                                  "story_halves": halves, "rows": table.to_dict("records")},
                                                 indent=1, default=str))
    return out / "COMPARE.md"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run the default profile for each embedded model and compare them.")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model aliases")
    ap.add_argument("--out", default="figures/compare")
    ap.add_argument("--force", action="store_true", help="rerun every stage")
    ap.add_argument("--no-run", action="store_true", help="only (re)write the comparison from existing runs")
    a = ap.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    secs = None if a.no_run else run_models(models, force=a.force)
    # running one model (e.g. only the second one) still compares it with every other model's finished run
    shown = [m for m in dict.fromkeys([*MODELS, *models]) if m in models or (run_folder(m) / "metrics").exists()]
    print(f"comparison: {write_comparison(shown, a.out, secs)}")


if __name__ == "__main__":
    main()
