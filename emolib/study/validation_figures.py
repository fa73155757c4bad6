"""Figures of stage 03, each returned with the numbers it draws (for ``emolib.study.runs.save_figure``).

Every function takes the tidy table its check returned and gives ``(fig, data)``; ``data`` is
JSON-ready and holds every plotted number, so the figure can be read back as data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emolib.study.implicit import pivot


def lens_figure(df: pd.DataFrame) -> tuple[Any, dict]:
    """Logit-lens table: one row per emotion, its top and bottom tokens."""
    import matplotlib.pyplot as plt

    from emolib.study.logit_lens import lens_table

    wide = lens_table(df)
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(wide) + 0.8))
    ax.axis("off")
    tab = ax.table(cellText=wide[["emotion", "top", "bottom"]].to_numpy(), colLabels=["emotion", "top tokens (pushed up)",
                   "bottom tokens (pushed down)"], loc="center", cellLoc="left", colWidths=[0.12, 0.44, 0.44])
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    for cell in tab.get_celld().values():
        cell.get_text().set_parse_math(False)
    ax.set_title(f"Logit lens of the emotion vectors (layer {int(df['layer'].iloc[0])})", fontsize=10)
    data = {"layer": int(df["layer"].iloc[0]),
            "rows": df[["emotion", "direction", "rank", "token", "token_id", "logit"]].to_dict(orient="records")}
    return fig, data


def scenario_figure(df: pd.DataFrame) -> tuple[Any, dict]:
    """Two 12x12 matrices: raw cosine and column-standardised, intended emotion on the diagonal."""
    import matplotlib.pyplot as plt

    raw, z = pivot(df, "cosine"), pivot(df, "z")
    n = len(raw)
    fig, axes = plt.subplots(1, 2, figsize=(2 * (0.45 * n + 2.2), 0.45 * n + 1.6))
    for ax, m, title, cmap in ((axes[0], raw, "cosine at the assistant-header token", "RdBu_r"),
                               (axes[1], z, "same, each probe z-scored over scenarios", "RdBu_r")):
        lim = float(np.nanmax(np.abs(m.to_numpy()))) or 1.0
        im = ax.imshow(m.to_numpy(), cmap=cmap, vmin=-lim, vmax=lim)
        ax.set_xticks(range(m.shape[1]), list(m.columns), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), list(m.index), fontsize=8)
        ax.set_xlabel("probe")
        ax.set_ylabel("scenario (intended emotion)")
        ax.set_title(title, fontsize=9)
        for i, r in enumerate(m.index):
            if r in m.columns:
                j = list(m.columns).index(r)
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.2, ec="black"))
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"Implicit scenarios, layer {int(df['layer'].iloc[0])}", fontsize=10)
    fig.tight_layout()
    data = {"layer": int(df["layer"].iloc[0]), "scenarios": list(raw.index), "probes": list(raw.columns),
            "cosine": raw.to_numpy().tolist(), "z": z.to_numpy().tolist()}
    return fig, data


def intensity_figure(readings: pd.DataFrame, trends: pd.DataFrame) -> tuple[Any, dict]:
    """One panel per template: cosine of each emotion against the number, each curve minus its own mean
    (log x when the numbers span >= 10x). The JSON keeps the raw cosines."""
    import matplotlib.pyplot as plt

    tids = list(dict.fromkeys(readings["template"]))
    ncol = min(3, len(tids))
    nrow = int(np.ceil(len(tids) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.8 * nrow), squeeze=False)
    rho = trends.set_index(["template", "emotion"])["rho"]
    for ax, tid in zip(axes.ravel(), tids):
        sub = readings[readings["template"] == tid]
        for e, g in sub.groupby("emotion", sort=False):
            g = g.sort_values("x")
            # each curve minus its own mean: the per-probe offsets (shared by all numbers) would
            # otherwise hide changes an order of magnitude smaller
            ax.plot(g["x"], g["cosine"] - g["cosine"].mean(), marker="o", ms=3,
                    label=f"{e} (rho {rho.get((tid, e), np.nan):+.2f})")
        xs = sub["x"].to_numpy(dtype=float)
        if xs.min() > 0 and xs.max() / xs.min() >= 10:
            ax.set_xscale("log")
        ax.set_title(tid, fontsize=9)
        ax.set_xlabel("number in the prompt", fontsize=8)
        ax.set_ylabel("cosine at header − curve mean", fontsize=8)
        # below the panel: inside, the legend hid the last points of rising curves
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    for ax in axes.ravel()[len(tids):]:
        ax.axis("off")
    fig.tight_layout()
    data = {"readings": readings[["template", "x", "emotion", "cosine"]].to_dict(orient="records"),
            "trends": trends.to_dict(orient="records")}
    return fig, data


def dissociation_figure(df: pd.DataFrame, stats: pd.DataFrame) -> tuple[Any, dict]:
    """Three scatters over (prompt, emotion) pairs: user vs header, header vs reply, user vs reply."""
    import matplotlib.pyplot as plt

    st = stats.set_index("pair")
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.9))
    # one distinct colour per emotion (the default 10-colour cycle repeats from the 11th emotion on),
    # and a second marker shape after the first ten
    emos = list(dict.fromkeys(df["emotion"]))
    tab20 = plt.get_cmap("tab20").colors
    palette = [tab20[2 * i] for i in range(10)] + [tab20[2 * i + 1] for i in range(10)]
    style = {e: (palette[i % 20], "o" if i < 10 else "s") for i, e in enumerate(emos)}
    for ax, (a, b) in zip(axes, (("user_last", "header"), ("header", "reply"), ("user_last", "reply"))):
        for e, g in df.groupby("emotion", sort=False):
            col, mk = style[e]
            ax.scatter(g[a], g[b], s=14, color=col, marker=mk, label=e)
        r = st.loc[f"{a}~{b}"]
        ax.set_title(f"{a} vs {b}: r = {r['r_pooled']:.2f} (within-emotion {r['r_within']:.2f})", fontsize=8)
        ax.set_xlabel(f"cosine at {a}", fontsize=8)
        ax.set_ylabel(f"cosine at {b}", fontsize=8)
    # outside the panels: inside, the legend covered points of the last scatter
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    data = {"points": df[["prompt", "emotion", "user_last", "header", "reply"]].to_dict(orient="records"),
            "stats": stats.to_dict(orient="records")}
    return fig, data


def layer_figure(scores: pd.DataFrame, default_layer: int | None = None) -> tuple[Any, dict]:
    """Scenario mean rank and diagonal wins per layer, standardised and raw."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for kind, g in scores.groupby("scoring", sort=False):
        g = g.sort_values("layer")
        axes[0].plot(g["layer"], g["mean_rank"], marker="o", ms=3, label=kind)
        axes[1].plot(g["layer"], g["diagonal_wins"], marker="o", ms=3, label=kind)
    chance = float(scores["chance_mean_rank"].iloc[0])
    axes[0].axhline(chance, ls=":", c="grey", label="chance")
    axes[1].axhline(1, ls=":", c="grey", label="chance")
    axes[0].set_ylabel("mean rank of intended emotion (lower is better)", fontsize=8)
    axes[1].set_ylabel(f"diagonal wins (of {int(scores['n'].iloc[0])})", fontsize=8)
    for ax in axes:
        ax.set_xlabel("layer (decoder block)")
        if default_layer is not None:
            ax.axvline(default_layer, c="k", lw=0.8, alpha=0.5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, {"scores": scores.to_dict(orient="records"), "default_layer": default_layer}
