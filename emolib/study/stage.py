"""One setup for every notebook: the run folder, the model, figures shown and saved, metrics, timing.

Each notebook's second cell is ``stage = open_stage("03_validate_vectors", run_dir=run_dir, ...)``.
The :class:`Stage` it returns is the notebook's only handle on the outside world:

* the run folder (created, checked writable, and locked for this kernel's life, so a second kernel
  or a ``make reproduce`` on the same folder fails at once instead of mixing outputs; under the
  pipeline the lock is the pipeline's, handed down to the kernel);
* the model, loaded once (:meth:`Stage.model`), with a check that no hook is left on it;
* :meth:`Stage.show`: every figure is saved (PNG + a JSON of every number it draws, for the
  report and the tests) **and** displayed in the notebook, in one call, so an executed notebook
  reads like the paper and a reader in Jupyter sees the same pictures;
* :meth:`Stage.timed` and :meth:`Stage.metric` collect wall times and headline numbers, which
  :meth:`Stage.finish` writes to ``<run>/metrics/<stage>.json`` for the report.

The layer convention is the same in every notebook: ``layer = None`` means the vectors' default
layer (chosen by 02's layer sweep); an integer is a block index (0-based).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emolib.study.locks import check_writable, exclusive
from emolib.study.runs import REPO_ROOT, save_figure, write_json, write_metrics

FIGURE_DPI = 110  # saved PNGs; the notebook shows the same file, so what is read is what is committed


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


@dataclass
class Stage:
    """A notebook's run: folders, model, figures, metrics and timings (see the module doc)."""

    name: str
    run: Path
    figures: Path
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    _model: tuple | None = None
    _locks: ExitStack = field(default_factory=ExitStack)

    # ---- the model ---------------------------------------------------------------------------
    def model(self):
        """``(model, tokenizer, info)``, loaded on first use from the stage's ``model`` parameter."""
        if self._model is None:
            from emolib.models import load_model
            from emolib.steering import assert_no_hooks

            with self.timed("load model"):
                self._model = load_model(self.params.get("model", "smollm2-135m-instruct"),
                                         device=self.params.get("device"), dtype=self.params.get("dtype"))
            assert_no_hooks(self._model[0])
            info = self._model[2]
            print(f"model {info.name}: {info.n_layers} blocks, width {info.width}, {info.dtype} on {info.device}"
                  + ("" if info.has_chat_template else "; no chat template (plain Human:/Assistant: format)"))
        return self._model

    def vectors(self, path: str | Path | None = None):
        """The run's ``vectors.safetensors`` (written by 02)."""
        from emolib.vectors import EmotionVectors

        return EmotionVectors.load(self.run / "vectors.safetensors" if path is None else path)

    def layer(self, vectors=None, layer: int | None = None) -> int:
        """The block a stage reads: ``layer`` if given, else the vectors' default layer."""
        if layer is None:
            layer = self.params.get("layer")
        if layer is None:
            if vectors is None or vectors.default_layer is None:
                raise ValueError("No layer given and the vectors have no default layer; set the `layer` parameter.")
            return int(vectors.default_layer)
        if vectors is not None and int(layer) not in vectors.layers:
            raise ValueError(f"Layer {layer} is not in the vectors (layers {vectors.layers[0]}..{vectors.layers[-1]}).")
        return int(layer)

    # ---- timing and numbers ------------------------------------------------------------------
    @contextmanager
    def timed(self, label: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[label]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - t

    def metric(self, key: str, label: str, ours: Any, paper: Any = None, note: str | None = None) -> None:
        """One headline number for the report (``paper`` beside it where the paper has one)."""
        self.rows.append({"key": key, "label": label, "ours": ours, "paper": paper, "note": note})

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Metric rows returned by a study function."""
        self.rows.extend(rows)

    def write(self, name: str, obj: Any) -> None:
        """A JSON artifact in the run folder (``name`` relative to it)."""
        write_json(self.run / name, obj)

    def finish(self):
        """Write the metrics (with this notebook's wall time) and return them as a table."""
        import pandas as pd

        total = time.perf_counter() - self.t0
        self.metric("wall_time_s", "wall time of this notebook (s)", round(total, 1),
                    note=", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items()))
        write_metrics(self.run, self.name, self.rows)
        return pd.DataFrame(self.rows)[["label", "ours", "paper", "note"]]

    # ---- figures -----------------------------------------------------------------------------
    def show(self, fig, data: dict[str, Any] | None, name: str, caption: str, width: int | None = None) -> None:
        """Save ``fig`` as ``<figures>/<name>.png`` (+ ``data``, every number it draws, as ``<name>.json``)
        and show that PNG here. Study functions return ``(fig, data)``, so a cell reads
        ``stage.show(*geometry.pca_figure(...), "04_pca", caption="...")``. A ``None`` figure (a part that
        was skipped, e.g. for want of human ratings) is announced in one line and nothing is saved."""
        import matplotlib.pyplot as plt

        if fig is None:
            print(f"{name}: not drawn (its inputs are missing; see the line above)")
            return
        path = save_figure(fig, name, data or {}, caption, self.figures, stage=self.name, dpi=FIGURE_DPI)
        plt.close(fig)
        display_png(path, width)  # returns nothing, so a cell ending in show() prints no path


def display_png(path: str | Path, width: int | None = None) -> None:
    """Show a saved PNG in the notebook (a no-op outside IPython)."""
    try:
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    display(Image(filename=str(path), width=width))


def plot_style() -> None:
    """One look for every figure: seaborn's white grid, readable fonts, no clipped labels."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.9)
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "axes.titlesize": 10,
                                "axes.titleweight": "bold", "legend.fontsize": 8})


def open_stage(name: str, *, run_dir: str | Path, figures_dir: str | Path | None = None, seed: int = 0,
               threads: int | None = None, lock: bool = True, **params: Any) -> Stage:
    """Set up a notebook: folders (created, writable, locked), seeds, threads, figure style.

    ``params`` are the notebook's other parameters (``model``, ``device``, ``dtype``, ``layer``...),
    kept on the stage for :meth:`Stage.model` and :meth:`Stage.layer`.
    """
    import numpy as np
    import torch

    run = _resolve(run_dir)
    figs = _resolve(figures_dir) if figures_dir else run / "figures"
    check_writable(run)
    check_writable(figs)
    stage = Stage(name=name, run=run, figures=figs, params=dict(params, seed=seed))
    if lock:
        stage._locks.enter_context(exclusive(run, what=f"notebook {name}"))
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    plot_style()
    return stage
