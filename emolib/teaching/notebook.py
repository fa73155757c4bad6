"""Building the assignment notebook in nbgrader's format, and the student version of it.

The teacher ("source") notebook is generated from :mod:`emolib.teaching.exercises`: markdown and
provided cells are locked, each answer cell is an nbgrader *solution* cell holding the library's
source, each test cell an autograded cell with points. nbgrader's ``generate_assignment`` turns it
into the student version; :func:`student_version` does the same without nbgrader (same markers,
same stub), for machines where nbgrader is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import nbformat

from emolib.teaching.exercises import BEGIN, END, EXERCISES, Exercise

ASSIGNMENT = "emotion_vectors"
END_SENTINEL = "End of the assignment: every cell ran."
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")

INTRO = """\
# Emotion vectors in a language model: an assignment

In 2026 Anthropic's interpretability team found linear **emotion vectors** inside Claude: write
stories in which a character feels an emotion, average the model's residual-stream activations
over each emotion's stories, and the resulting directions light up in the right contexts and
*cause* behaviour when added back. You will rebuild the key pieces on a small open model
(SmolLM2-135M-Instruct), one function at a time, and watch the real figures appear.

**How this works.** Each exercise has an explanation, a cell for your code (replace
`raise NotImplementedError()`), test cells that grade it (their messages say what is wrong), and
a figure drawn *with your code*. Exercises are independent: a blank or wrong answer only costs
its own points, and the notebook still runs to the end. Run the cells in order; the set-up cell
takes about a minute on a laptop CPU.

| # | exercise | level | time | points |
|---|---|---|---|---|
{table}

Everything you need is in `emolib` (installed with this course); please do not call the library's
own version of the function you are asked to write: the point is to write it.
"""

SETUP = """\
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from emolib.capture import tag  # marks a hook as emolib's, so assert_no_hooks can count it
from emolib.models import find_layers
from emolib.study.preferences import BTFit
from emolib.teaching import checks, demo

# The model: the embedded SmolLM2-135M-Instruct unless $EMOLIB_TEACHING_MODEL says otherwise.
cls = demo.setup()
print(cls.describe())"""


def _meta(cell, grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
          points: int | None = None):
    md = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
          "task": False}
    if points is not None:
        md["points"] = points
    cell.metadata["nbgrader"] = md
    return cell


def _md(text: str, grade_id: str):
    return _meta(nbformat.v4.new_markdown_cell(text), grade_id, locked=True)


def exercise_cells(ex: Exercise) -> list:
    head = (f"## Exercise {ex.number}: {ex.title}\n*{ex.level}, about {ex.minutes} minutes, {ex.points} points*\n\n"
            f"{ex.explain}\n\n<details><summary>Hint</summary>\n\n{ex.hint}\n\n</details>")
    cells = [_md(head, f"ex{ex.number}-text"),
             _meta(nbformat.v4.new_code_cell(ex.answer_source()), f"ex{ex.number}-answer", solution=True)]
    for t in ex.tests:
        code = f"# Test {ex.number}.{t.name} ({t.points} points)\n{t.code}\nprint('passed')"
        cells.append(_meta(nbformat.v4.new_code_cell(code), f"ex{ex.number}-test-{t.name}", grade=True, locked=True,
                           points=t.points))
    cells.append(nbformat.v4.new_code_cell(f"# Exercise {ex.number}'s figure, drawn with your code\n"
                                           f"result_{ex.number} = {ex.demo}"))
    return cells


def source_notebook(exercises: Sequence[Exercise] = EXERCISES) -> nbformat.NotebookNode:
    """The teacher's notebook: answers in place, nbgrader metadata on every graded or locked cell."""
    table = "\n".join(f"| {e.number} | {e.title} | {e.level} | ~{e.minutes} min | {e.points} |" for e in exercises)
    nb = nbformat.v4.new_notebook()
    nb.cells = [_md(INTRO.format(table=table), "intro"),
                _meta(nbformat.v4.new_code_cell(SETUP), "setup", locked=True)]
    for ex in exercises:
        nb.cells.extend(exercise_cells(ex))
    nb.cells.append(_md("## Done\nThe last cell confirms the notebook ran to the end.", "end-text"))
    nb.cells.append(_meta(nbformat.v4.new_code_cell(f"print({END_SENTINEL!r})"), "end", locked=True))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


_MARKED = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)",
                     re.MULTILINE | re.DOTALL)


def strip_solution(source: str) -> str:
    """Replace every marked region by the stub, at the marker's indentation (as nbgrader does)."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError("Unbalanced solution markers in a cell.")
    return _MARKED.sub(lambda m: "".join(f"{m.group(1)}{line}\n" for line in STUB), source).rstrip("\n")


def student_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook a student receives: solutions stubbed, outputs cleared, tests kept."""
    out = nbformat.from_dict(nb)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if cell.metadata.get("nbgrader", {}).get("solution"):
                cell.source = strip_solution(cell.source)
    return out


def write(nb: nbformat.NotebookNode, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path
