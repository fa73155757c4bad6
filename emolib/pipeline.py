"""The papermill pipeline: run notebooks 01..06 in order on one profile, skip what is done.

    python -m emolib.pipeline --profile default            # what `make reproduce` runs
    python -m emolib.pipeline --profile smoke --run-dir /tmp/x
    python -m emolib.pipeline --set model=Qwen/Qwen2.5-0.5B-Instruct --set 01_generate_stories.batch_size=8
    python -m emolib.pipeline --only 03,04 --force

A profile is ``profiles/<name>.toml``: a ``[common]`` table passed to every notebook, and one table
per stage. A stage is skipped when its record in ``<run>/stages/`` has the same parameter hash
(which chains in the upstream stages' hashes) and finished ``ok``. A failing stage stops the
pipeline, prints the notebook's own error, and keeps the executed notebook for inspection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emolib.study.locks import LockedError, check_writable, exclusive, handed_to_children
from emolib.study.report import commit
from emolib.study.runs import REPO_ROOT, read_json, write_json

STAGES = (
    "01_generate_stories",
    "02_extract_vectors",
    "03_validate_vectors",
    "04_geometry",
    "05_monitoring",
    "06_causal_steering",
)
# Parameters that say where a stage runs, not what it computes: a Ray run writes what a local run
# writes, so they are left out of the stage hash (switching engine never reruns a finished stage).
EXECUTION_KEYS = ("engine", "ray_workers", "ray_gpus_per_worker")
# Profile keys the pipeline itself reads (never passed to a notebook).
COMMON_ONLY = ("figures",)
PROFILES_DIR = REPO_ROOT / "profiles"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage, the error and the kept notebook."""


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, dict[str, Any]]:
    """Read ``<profiles_dir>/<name>.toml`` into ``{"common": {...}, stage: {...}, ...}``."""
    path = Path(profiles_dir) / f"{name}.toml"
    if not path.exists():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.toml"))
        raise PipelineError(f"Unknown profile {name!r}; known profiles: {', '.join(known)}.")
    with open(path, "rb") as f:
        prof = tomllib.load(f)
    prof.setdefault("common", {})
    for st in STAGES:
        prof.setdefault(st, {})
    return prof


def apply_overrides(prof: dict[str, dict[str, Any]], sets: list[str],
                    declared: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``key=value`` sets a common key or every stage key of that name; ``stage.key=value`` one stage.

    With ``declared`` (each notebook's parameters), a key the profile does not list but some
    notebooks declare is set for those notebooks.
    """
    prof = {k: dict(v) for k, v in prof.items()}
    for item in sets:
        if "=" not in item:
            raise PipelineError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = _parse_value(raw)
        if "." in key and key.split(".", 1)[0] in STAGES:
            st, k = key.split(".", 1)
            prof[st][k] = value
            continue
        hit = False
        if key in prof["common"] or key in {"model", "seed", "device", "dtype"}:
            prof["common"][key] = value
            hit = True
        for st in STAGES:
            if key in prof[st]:
                prof[st][key] = value
                hit = True
        for st, names in (declared or {}).items():
            if not hit and key in names:
                prof[st][key] = value
        if declared and any(key in names for names in declared.values()):
            hit = True
        if not hit:
            raise PipelineError(f"--set {key}: no such parameter in the profile (use stage.key=value to add one).")
    return prof


def notebook_parameters(path: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's cell tagged ``parameters`` (read with ``ast``).

    Only ``name = <literal>`` lines count; this is the list a profile or ``--set`` may override.
    """
    import ast

    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", []))
            out: dict[str, Any] = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    name, value = node.targets[0].id, node.value
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                    name, value = node.target.id, node.value
                    _ANNOTATIONS[(str(Path(path).name), name)] = ast.unparse(node.annotation)
                else:
                    continue
                try:
                    out[name] = ast.literal_eval(value)
                except ValueError:
                    out[name] = None
            return out
    raise PipelineError(f"{path} has no cell tagged 'parameters'.")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
# (notebook file name, parameter) -> annotation, for parameters declared as ``layer: int | None = None``:
# a None default says nothing about the type a profile may give, the annotation does
_ANNOTATIONS: dict[tuple[str, str], str] = {}
_ANNOTATED = {"int": 0, "float": 0.0, "str": "", "bool": False, "list": []}


# parameters whose notebook default is None but whose values have one type (the layer convention)
_NONE_DEFAULT_TYPES = {"layer": "int"}


def _typed_default(stage: str, key: str, default: Any) -> Any:
    """The default to check a value against: for a None default, an example of its declared type."""
    if default is not None:
        return default
    ann = _ANNOTATIONS.get((f"{stage}.ipynb", key), _NONE_DEFAULT_TYPES.get(key, ""))
    kinds = [k.strip() for k in ann.split("|") if k.strip() not in ("None", "")]
    return _ANNOTATED.get(kinds[0]) if len(kinds) == 1 else None


def coerce(stage: str, key: str, value: Any, default: Any) -> Any:
    """``value`` checked against the type of the notebook's ``default`` (None: any type).

    int takes an int (not a bool, not 2.5); float takes an int or float; bool takes true/false;
    a string or list parameter takes either (subsets such as ``emotions`` are a name or a list of words).
    """
    default = _typed_default(stage, key, default)
    if default is None or value is None:
        return value
    kind = type(default)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, (str, list)),
          list: lambda v: isinstance(v, (list, str))}.get(kind, lambda v: True)
    if not ok(value):
        raise PipelineError(f"{stage}.{key} expects {_TYPE_NAMES.get(kind, kind.__name__)} (its default is "
                            f"{default!r}), got {value!r}.")
    return float(value) if kind is float else value


def check_profile(prof: dict[str, dict[str, Any]], notebooks_dir: Path) -> dict[str, dict[str, Any]]:
    """Every profile key must be a parameter of the notebook(s) it goes to, of the right type.

    A typo (``batchsize``) is an error naming the closest parameters, before any stage runs,
    instead of papermill's "Passed unknown parameter" log line and a stage that ignored it.
    """
    import difflib

    declared = {st: notebook_parameters(notebooks_dir / f"{st}.ipynb") for st in STAGES
                if (notebooks_dir / f"{st}.ipynb").exists()}
    everywhere = sorted({k for d in declared.values() for k in d})
    out = {k: dict(v) for k, v in prof.items()}
    for key, value in prof["common"].items():
        owners = [st for st, d in declared.items() if key in d]
        if key not in COMMON_ONLY and not owners:
            close = difflib.get_close_matches(key, everywhere, n=4, cutoff=0.6)
            raise PipelineError(f"Unknown parameter {key!r} (no notebook declares it)."
                                + (f" Did you mean: {', '.join(close)}?" if close else ""))
        for st in owners:
            out["common"][key] = coerce(st, key, value, declared[st][key])
    for st, d in declared.items():
        for key, value in prof.get(st, {}).items():
            if key not in d:
                close = difflib.get_close_matches(key, list(d), n=4, cutoff=0.6)
                raise PipelineError(f"{st} has no parameter {key!r}."
                                    + (f" Did you mean: {', '.join(close)}?" if close else "")
                                    + f" Its parameters: {', '.join(sorted(d))}.")
            out[st][key] = coerce(st, key, value, d[key])
    return out


@dataclass
class StageResult:
    stage: str
    status: str  # ok, skipped, failed
    seconds: float
    notebook: Path


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _log(run: Path, line: str, echo: bool = False) -> None:
    """A line in ``<run>/pipeline.log``; on the terminal only when ``echo`` (the progress bars say the rest)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = repo_relative(line)  # the log is published with the committed run: paths by their place in the repo
    with open(run / "pipeline.log", "a", encoding="utf-8") as f:
        f.write(f"{stamp} {line}\n")
    if echo:
        print(line, file=sys.stderr, flush=True)


# The kernel's own start-up chatter ("running over TCP without encryption") is not the user's business.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


def stage_parameters(prof: dict[str, dict[str, Any]], stage: str, run: Path, figures: Path,
                     profile: str, declared: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters papermill gives ``stage``: common values, then the stage's own, then the run's
    folders; with ``declared`` (the notebook's parameters), only those it declares."""
    params = dict(prof["common"])
    params.update(prof[stage])
    params["run_dir"] = str(run)
    params["figures_dir"] = str(figures)
    params["profile"] = profile
    if declared is not None:
        params = {k: v for k, v in params.items() if k in declared}
    return params


def run_pipeline(profile: str = "default", run: str | Path | None = None, sets: list[str] | None = None,
                 force: bool = False, only: list[str] | None = None, figures: str | Path | None = None,
                 report: bool = True, log_output: bool = False, notebooks_dir: str | Path = NOTEBOOKS_DIR,
                 profiles_dir: str | Path = PROFILES_DIR) -> list[StageResult]:
    """Run the stages of ``profile`` in order; returns one result per stage run or skipped."""

    notebooks_dir = Path(notebooks_dir)
    declared = {st: notebook_parameters(notebooks_dir / f"{st}.ipynb") for st in STAGES
                if (notebooks_dir / f"{st}.ipynb").exists()}
    prof = apply_overrides(load_profile(profile, Path(profiles_dir)), sets or [], declared)
    prof = check_profile(prof, notebooks_dir)
    selected = _select(only)
    run_path = Path(run or f"runs/{profile}")
    run_path = run_path if run_path.is_absolute() else REPO_ROOT / run_path
    default_figs = prof["common"].pop("figures", None)
    changed_model = any(s.startswith("model=") for s in (sets or []))
    if figures is None:
        figures = default_figs if (default_figs and not changed_model and run is None) else run_path / "figures"
    fig_path = Path(figures) if Path(figures).is_absolute() else REPO_ROOT / figures
    try:  # before any work: a read-only folder fails here, not after a stage has run
        check_writable(run_path)
        check_writable(fig_path)
    except PermissionError as err:
        raise PipelineError(str(err)) from None
    try:
        with exclusive(run_path, what=f"emolib.pipeline --profile {profile}"), handed_to_children(run_path):
            return _run_stages(prof, profile, run_path, fig_path, selected, declared, force, report, log_output,
                               notebooks_dir)
    except LockedError as err:
        raise PipelineError(str(err)) from None


def _run_stages(prof, profile: str, run_path: Path, fig_path: Path, selected: set[str], declared, force: bool,
                report: bool, log_output: bool, notebooks_dir: Path) -> list[StageResult]:
    import papermill as pm

    results: list[StageResult] = []
    upstream = ""
    t_all = time.perf_counter()
    for stage in STAGES:
        params = stage_parameters(prof, stage, run_path, fig_path, profile, declared.get(stage))
        what = {k: v for k, v in params.items() if k not in EXECUTION_KEYS}
        digest = _hash({"params": what, "upstream": upstream, "notebook": _file_hash(notebooks_dir / f"{stage}.ipynb")})
        upstream = digest
        out_nb = run_path / "notebooks" / f"{stage}.ipynb"
        record_path = run_path / "stages" / f"{stage}.json"
        if stage not in selected:
            continue
        src = notebooks_dir / f"{stage}.ipynb"
        if not src.exists():
            _log(run_path, f"{stage}: notebook not written yet, skipped", echo=True)
            continue
        if not force and record_path.exists():
            rec = read_json(record_path)
            if rec.get("hash") == digest and rec.get("status") == "ok" and out_nb.exists():
                _log(run_path, f"{stage}: up to date (ran in {rec.get('seconds', 0):.0f} s), skipped", echo=True)
                results.append(StageResult(stage, "skipped", 0.0, out_nb))
                continue
        _log(run_path, f"{stage}: running")
        t0 = time.perf_counter()
        out_nb.parent.mkdir(parents=True, exist_ok=True)
        last = read_json(record_path).get("seconds") if record_path.exists() else None  # the previous run's time
        write_json(record_path, {"stage": stage, "hash": digest, "status": "running", "params": params})
        desc = f"{stage} (last run {last:.0f} s)" if last else stage
        bar = False if log_output else {"desc": desc, "bar_format": "{desc}: {percentage:3.0f}%|{bar:24}| "
                                        "{n_fmt}/{total_fmt} cells [{elapsed}<{remaining}]", "leave": True}
        try:
            pm.execute_notebook(str(src), str(out_nb), parameters=params, cwd=str(REPO_ROOT),
                                kernel_name="python3", progress_bar=bar, log_output=log_output,
                                extra_arguments=KERNEL_ARGS)
        except Exception as err:  # papermill wraps the notebook's own exception
            secs = time.perf_counter() - t0
            write_json(record_path, {"stage": stage, "hash": digest, "status": "failed", "seconds": secs,
                                     "params": params, "error": str(err)[-4000:]})
            _log(run_path, f"{stage}: FAILED after {secs:.1f} s; executed notebook kept at {out_nb}", echo=True)
            raise PipelineError(f"Stage {stage} failed (executed notebook: {out_nb}).\n{err}") from None
        secs = time.perf_counter() - t0
        write_json(record_path, {"stage": stage, "hash": digest, "status": "ok", "seconds": secs, "params": params,
                                 "finished": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit()})
        _log(run_path, f"{stage}: ok in {secs:.1f} s")
        _publish(out_nb, fig_path, run_path)
        results.append(StageResult(stage, "ok", secs, out_nb))
    _log(run_path, f"pipeline: done in {time.perf_counter() - t_all:.1f} s", echo=bool(results))
    if report:
        from emolib.study.report import build_report

        path = build_report(run_path, fig_path, profile=profile)
        _log(run_path, f"report: {path}", echo=True)
    if any(r.status == "ok" for r in results):
        _publish_log(run_path, fig_path)
    return results


NOTEBOOK_BUDGET = 3_000_000  # bytes: an executed notebook in the repository stays readable on GitHub


def repo_relative(text: str, root: Path | None = None) -> str:
    """``text`` with this checkout's absolute path taken out (``<root>/runs/x`` -> ``runs/x``): a published
    notebook's parameters and papermill metadata then name files by their path in the repository, not
    by where one machine happened to keep it."""
    root_s = str(Path(root or REPO_ROOT))
    return text.replace(root_s + "/", "").replace(root_s, ".")


def _publish(executed: Path, figures: Path, run: Path) -> Path | None:
    """The committed run (figures outside the run folder) keeps its executed notebooks beside its figures,
    in ``<figures>/notebooks/``, so the repository reads like the paper without running anything."""
    if figures.resolve().is_relative_to(run.resolve()):
        return None
    out = figures / "notebooks" / executed.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(repo_relative(executed.read_text(encoding="utf-8")), encoding="utf-8")
    if out.stat().st_size > NOTEBOOK_BUDGET:
        _log(run, f"WARNING: {out} is {out.stat().st_size / 1e6:.1f} MB (budget {NOTEBOOK_BUDGET / 1e6:.0f} MB)",
             echo=True)
    return out


def _publish_log(run: Path, figures: Path) -> Path | None:
    """The committed run's ``pipeline.log`` (each stage's start, end and seconds) beside its figures, so the
    run time the docs quote can be checked in the repository."""
    if figures.resolve().is_relative_to(run.resolve()) or not (run / "pipeline.log").exists():
        return None
    out = figures / "pipeline.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(repo_relative((run / "pipeline.log").read_text(encoding="utf-8")), encoding="utf-8")
    return out


def _file_hash(path: Path) -> str | None:
    if not path.exists():
        return None
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c.get("source") for c in nb.get("cells", [])]
    return _hash(cells)


def _select(only: list[str] | None) -> set[str]:
    if not only:
        return set(STAGES)
    out = set()
    for item in only:
        match = [s for s in STAGES if s == item or s.startswith(item.zfill(2) + "_") or s.startswith(item)]
        if not match:
            raise PipelineError(f"Unknown stage {item!r}; stages: {', '.join(STAGES)}")
        out.update(match)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emolib.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run-dir", default=None, help="run folder (default runs/<profile>)")
    ap.add_argument("--figures", default=None, help="figures folder (default: the profile's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    ap.add_argument("--only", default=None, help="comma-separated stages, e.g. 01,02")
    ap.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--log-output", action="store_true", help="stream notebook output to this terminal")
    args = ap.parse_args(argv)
    try:
        run_pipeline(args.profile, args.run_dir, args.set, args.force,
                     args.only.split(",") if args.only else None, args.figures,
                     report=not args.no_report, log_output=args.log_output)
    except PipelineError as err:
        print(f"\nERROR: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
