"""An nbgrader course folder for the assignment, and grading a folder of submissions.

``make assignments`` -> :func:`build_course`: ``<root>/source/emotion_vectors/`` (the teacher
notebook, generated from the library) and ``<root>/release/emotion_vectors/`` (the student
notebook, made by ``nbgrader generate_assignment``), plus an ``nbgrader_config.py``, so a teacher
can go on with nbgrader's own commands (collect, autograde, feedback) in that folder.

``make grade SUBMISSIONS=dir`` -> :func:`grade`: every ``dir/<student>.ipynb`` (or
``dir/<student>/emotion_vectors.ipynb``) is autograded by ``nbgrader autograde`` and a score table
(student x exercise) is written as ``scores.csv`` and ``scores.md``. Without nbgrader the same
markers and points are honoured by :func:`grade_notebook` (nbclient, errors allowed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd

from emolib.teaching.exercises import EXERCISES
from emolib.teaching.notebook import ASSIGNMENT, END_SENTINEL, source_notebook, student_version, write

CONFIG = """\
# nbgrader configuration for the emotion-vectors assignment (written by `make assignments`).
c = get_config()
c.CourseDirectory.course_id = "emotion-vectors"
c.CourseDirectory.root = {root!r}
# The set-up cell loads a model and pools ~110 texts: allow more than nbgrader's 30 s per cell.
c.Execute.timeout = {timeout}
"""


def have_nbgrader() -> bool:
    return importlib.util.find_spec("nbgrader") is not None


def _engine(engine: str) -> str:
    if engine not in ("auto", "nbgrader", "builtin"):
        raise ValueError(f"engine must be 'auto', 'nbgrader' or 'builtin', not {engine!r}.")
    if engine == "nbgrader" and not have_nbgrader():
        raise RuntimeError("nbgrader is not installed: `pip install -e '.[teach]'` (or use engine='builtin').")
    if engine == "auto":
        return "nbgrader" if have_nbgrader() else "builtin"
    return engine


def _nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nbgrader", *args]
    # nbgrader runs the `alembic` script by name: the environment's bin folder must be on PATH
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"`nbgrader {' '.join(args)}` failed in {root}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def build_course(root: str | Path, engine: str = "auto", timeout: int = 600) -> Path:
    """Write the course folder and return the student notebook's path."""
    root = Path(root).resolve()
    eng = _engine(engine)
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(CONFIG.format(root=str(root), timeout=int(timeout)))
    src = write(source_notebook(), root / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    release = root / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    if eng == "nbgrader":
        _nbgrader(root, "generate_assignment", ASSIGNMENT, "--force")
    else:
        write(student_version(nbformat.read(str(src), as_version=4)), release)
    return release


# ---- grading ------------------------------------------------------------------------------------
def _exercise_of(grade_id: str) -> str:
    return grade_id.split("-", 1)[0]  # "ex3-test-projection" -> "ex3"


def _ran_to_end(nb: nbformat.NotebookNode) -> bool:
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    return any(END_SENTINEL in o.get("text", "") for o in last.get("outputs", []))


def _error_of(cell) -> str:
    for o in cell.get("outputs", []):
        if o.get("output_type") == "error":
            return f"{o.get('ename')}: {o.get('evalue')}"
    return ""


def cell_scores(nb: nbformat.NotebookNode) -> list[dict]:
    """One row per autograded cell of an *executed* notebook: full points if it raised no error."""
    rows = []
    for cell in nb.cells:
        md = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and md.get("grade"):
            err = _error_of(cell)
            pts = float(md.get("points", 0))
            rows.append({"grade_id": md["grade_id"], "exercise": _exercise_of(md["grade_id"]),
                         "score": 0.0 if err else pts, "max_score": pts, "error": err})
    return rows


def grade_notebook(path: str | Path, out: str | Path | None = None, timeout: int = 600) -> tuple[list[dict], bool]:
    """The built-in autograder: run the notebook with errors allowed, score its test cells.

    Test cells are taken from the released assignment, not from the submission (a student who
    edits a test cannot pass it that way), exactly as nbgrader restores locked cells.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    reference = {c.metadata["nbgrader"]["grade_id"]: c for c in source_notebook().cells
                 if c.metadata.get("nbgrader", {}).get("locked")}
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in reference:
            cell.source = reference[gid].source
    NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    if out is not None:
        write(nb, out)
    return cell_scores(nb), _ran_to_end(nb)


def collect(submissions: str | Path) -> dict[str, Path]:
    """``student -> notebook``: ``dir/<student>.ipynb`` or ``dir/<student>/<anything>.ipynb``."""
    d = Path(submissions)
    if not d.is_dir():
        raise FileNotFoundError(f"No submissions folder {d}.")
    found: dict[str, Path] = {}
    for p in sorted(d.glob("*.ipynb")):
        found[p.stem] = p
    for sub in sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith(".")):
        nbs = sorted(sub.glob("*.ipynb"))
        if len(nbs) > 1:
            named = [n for n in nbs if n.stem == ASSIGNMENT]
            nbs = named or nbs
        if nbs:
            if sub.name in found:
                raise ValueError(f"Two submissions for {sub.name!r}: {found[sub.name]} and {nbs[0]}.")
            found[sub.name] = nbs[0]
    if not found:
        raise FileNotFoundError(f"No .ipynb submissions in {d} (expected <student>.ipynb or <student>/*.ipynb).")
    bad = [s for s in found if not s.replace("-", "").replace("_", "").replace(".", "").isalnum()]
    if bad:
        raise ValueError(f"Student ids must be letters, digits, '-', '_' or '.': {bad}")
    return found


def _nbgrader_rows(root: Path, students: list[str]) -> dict[str, list[dict]]:
    from nbgrader.api import Gradebook

    out: dict[str, list[dict]] = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for s in students:
            sub = gb.find_submission(ASSIGNMENT, s)
            rows = []
            for nb in sub.notebooks:
                for g in nb.grades:
                    rows.append({"grade_id": g.name, "exercise": _exercise_of(g.name),
                                 "score": float(g.score), "max_score": float(g.max_score), "error": ""})
            out[s] = rows
    return out


def unreadable(path: str | Path) -> str | None:
    """Why a submitted file cannot be graded (not JSON, not a notebook), or None if it can."""
    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - nbformat raises JSON, validation and encoding errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"not a readable notebook ({type(err).__name__}: {first[:200]})"
    return None


def score_table(per_student: dict[str, list[dict]], ran: dict[str, bool],
                status: dict[str, str] | None = None) -> pd.DataFrame:
    """Student x exercise points, plus total, maximum, whether the notebook ran to its end, and a
    status ("graded", or why a submission could not be graded: it scores 0, the others go on)."""
    cols = [f"ex{e.number}" for e in EXERCISES]
    table = []
    for s, rows in per_student.items():
        r = {"student": s}
        for c in cols:
            r[c] = sum(x["score"] for x in rows if x["exercise"] == c)
        r["total"] = sum(r[c] for c in cols)
        r["max"] = float(sum(e.points for e in EXERCISES))
        r["ran_to_end"] = ran.get(s, False)
        r["status"] = (status or {}).get(s, "graded")
        table.append(r)
    return pd.DataFrame(table, columns=["student", *cols, "total", "max", "ran_to_end", "status"])


def grade(root: str | Path, submissions: str | Path, engine: str = "auto", timeout: int = 600) -> pd.DataFrame:
    """Autograde every submission and write ``scores.csv``, ``scores.md`` and ``failures.json`` in ``root``."""
    root = Path(root).resolve()
    eng = _engine(engine)
    if not (root / "source" / ASSIGNMENT).exists():
        build_course(root, engine=eng, timeout=timeout)
    found = collect(submissions)
    per: dict[str, list[dict]] = {s: [] for s in found}
    ran: dict[str, bool] = {}
    status: dict[str, str] = {}
    for s, p in found.items():  # a corrupt file scores 0 with its reason; the class is still graded
        why = unreadable(p)
        if why:
            status[s] = why
    good = {s: p for s, p in found.items() if s not in status}
    if eng == "nbgrader":
        for s, p in good.items():
            dest = root / "submitted" / s / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
        for s in good:  # one student per call: a submission that breaks nbgrader breaks only its own grade
            try:
                _nbgrader(root, "autograde", ASSIGNMENT, "--student", s, "--create", "--force")
                per[s] = _nbgrader_rows(root, [s])[s]
                nb = nbformat.read(str(root / "autograded" / s / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"), as_version=4)
            except Exception as err:  # noqa: BLE001
                status[s] = f"grading failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})"
                continue
            ran[s] = _ran_to_end(nb)
            errors = {r["grade_id"]: r["error"] for r in cell_scores(nb)}
            for r in per[s]:
                r["error"] = errors.get(r["grade_id"], "")
    else:
        for s, p in good.items():
            out = root / "autograded" / s / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
            try:
                per[s], ran[s] = grade_notebook(p, out, timeout=timeout)
            except Exception as err:  # noqa: BLE001
                status[s] = f"grading failed ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})"
    table = score_table(per, ran, status)
    table.to_csv(root / "scores.csv", index=False)
    (root / "scores.md").write_text(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    failures = {s: [r for r in rows if r["score"] < r["max_score"]] for s, rows in per.items()}
    for s, why in status.items():
        failures[s] = [{"grade_id": None, "exercise": None, "score": 0.0, "max_score": None, "error": why}]
    (root / "failures.json").write_text(json.dumps(failures, indent=1))
    return table


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None
