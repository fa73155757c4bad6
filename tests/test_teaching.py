"""The classroom assignment: generated from the library, stripped correctly, graded fairly.

Fast tests run every check on the library's answers and on planted mistakes; the nbgrader tests
build a course in a temporary folder and autograde four submissions on the tiny model.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import nbformat
import numpy as np
import pytest
import torch

from emolib.models import find_layers
from emolib.teaching import EXERCISES, checks, course, exercise
from emolib.teaching.exercises import BEGIN, END
from emolib.teaching.notebook import END_SENTINEL, source_notebook, strip_solution, student_version


def _answers(ex):
    return {f.__name__: f for f in ex.answer_functions()}


def _run_check(code: str, fns: dict) -> None:
    eval(code, {"checks": checks, **fns})


ALL_TESTS = [(ex.number, t) for ex in EXERCISES for t in ex.tests]


# ---- structure ---------------------------------------------------------------------------------
def test_six_exercises_easy_to_hard_with_points():
    assert len(EXERCISES) >= 6
    assert [e.number for e in EXERCISES] == list(range(1, len(EXERCISES) + 1))
    rank = {"easy": 0, "medium": 1, "hard": 2}
    levels = [rank[e.level] for e in EXERCISES]
    assert levels == sorted(levels) and levels[0] == 0 and levels[-1] == 2
    for e in EXERCISES:
        assert e.points > 0 and e.tests and e.hint and e.explain and e.demo
        src = e.answer_source()
        assert src.count(BEGIN) == src.count(END) >= 1


def test_answers_are_the_library_functions():
    """One source of truth: the answer cell is the library function's own source."""
    import inspect

    from emolib import capture, steering

    assert exercise(1).answer_source().strip() == inspect.getsource(capture.pool_mask).strip()
    assert "@contextmanager" in exercise(5).answer_source()
    assert exercise(5).answer_functions() == [steering.add_vector]


def _solution_lines(source: str) -> set[str]:
    inside, out = False, set()
    for line in source.splitlines():
        if BEGIN in line:
            inside = True
        elif END in line:
            inside = False
        elif inside and line.strip():
            out.add(line.strip())
    return out


def test_student_version_removes_every_solution_and_keeps_every_test():
    src = source_notebook()
    stu = student_version(src)
    assert len(src.cells) == len(stu.cells)
    n_solution = n_tests = 0
    for a, b in zip(src.cells, stu.cells):
        md = a.metadata.get("nbgrader", {})
        assert b.metadata.get("nbgrader", {}) == md
        if md.get("solution"):
            n_solution += 1
            assert BEGIN not in b.source and END not in b.source
            assert "raise NotImplementedError()" in b.source
            outside = set(line.strip() for line in a.source.splitlines()) - _solution_lines(a.source)
            leaked = (_solution_lines(a.source) - outside) & set(line.strip() for line in b.source.splitlines())
            assert not leaked, f"solution lines left in {md['grade_id']}: {leaked}"
            compile(b.source, md["grade_id"], "exec")  # the stub is valid Python
        else:
            assert a.source == b.source
        if md.get("grade"):
            n_tests += 1
    assert n_solution == len(EXERCISES)
    assert n_tests == sum(len(e.tests) for e in EXERCISES)
    points = [c.metadata["nbgrader"]["points"] for c in stu.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert sum(points) == sum(e.points for e in EXERCISES)


def test_strip_solution_keeps_indentation_and_code_after_markers():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    y = x + 1\n    ### END SOLUTION\n    return y\n"
    out = strip_solution(src)
    assert out == "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n    return y"
    with pytest.raises(ValueError, match="Unbalanced"):
        strip_solution("### BEGIN SOLUTION\nx = 1\n")


# ---- the checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("number,test", ALL_TESTS, ids=[f"ex{n}-{t.name}" for n, t in ALL_TESTS])
def test_checks_pass_on_the_library_answers(number, test):
    _run_check(test.code, _answers(exercise(number)))


@pytest.mark.parametrize("number,test", ALL_TESTS, ids=[f"ex{n}-{t.name}" for n, t in ALL_TESTS])
def test_blank_answers_fail_every_check(number, test):
    def blank(*_a, **_k):
        raise NotImplementedError()

    fns = {name: blank for name in _answers(exercise(number))}
    with pytest.raises(NotImplementedError):
        _run_check(test.code, fns)


# Planted mistakes students make, each with the phrase its message must contain.
def pool_from_padding_edge(attention_mask, start):
    return attention_mask.bool() & (torch.arange(attention_mask.shape[1]) >= start)


def pool_with_padding(attention_mask, start):
    return (attention_mask.long().cumsum(-1) - 1) >= start


def pool_ignoring_start(attention_mask, start):
    return attention_mask.bool()


def means_nanmean(story_means, labels, emotions=None):
    x = torch.as_tensor(story_means).double()
    names = list(emotions)
    out = [torch.nanmean(x[[i for i, lbl in enumerate(labels) if lbl == e]], dim=0) for e in names]
    return torch.stack(out).float(), names, torch.tensor([sum(lbl == e for lbl in labels) for e in names])


def means_silent_nan(story_means, labels, emotions=None):
    x = torch.as_tensor(story_means).double()
    out = [x[[i for i, lbl in enumerate(labels) if lbl == e]].mean(0) for e in emotions]
    return torch.stack(out).float(), list(emotions), torch.tensor([0] * len(emotions))


def center_over_width(means, dim=0):
    m = torch.as_tensor(means).double()
    g = m.mean(dim=-1)
    return (m - g.unsqueeze(-1)).float(), g.float()


def n_components_strict(r, threshold=0.5):
    cum = torch.cumsum(torch.as_tensor(r, dtype=torch.float64), 0)
    if threshold <= 0:
        return 0
    hit = torch.nonzero(cum > threshold).flatten()
    return int(hit[0]) + 1 if len(hit) else len(cum)


def project_first_only(v, basis):
    v = torch.as_tensor(v).float()
    if basis.numel() == 0:
        return v.clone()
    b = basis[:1].float()
    return v - (v @ b.T) @ b


def cosine_as_dot(acts, vectors):
    return torch.as_tensor(acts).float() @ torch.as_tensor(vectors).float().T


@contextmanager
def add_vector_no_finally(model, layer, delta):
    block = find_layers(model)[layer]
    handle = block.register_forward_hook(lambda _m, _a, out: out + delta)
    yield
    handle.remove()


@contextmanager
def add_vector_no_return(model, layer, delta):
    block = find_layers(model)[layer]

    def hook(_m, _a, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h + delta  # a new local tensor: the block's output is unchanged  # noqa: F841

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def option_probs_columns(option_lp):
    return torch.softmax(option_lp, dim=0), option_lp.exp().sum(-1)


def bt_wrong_sign(first, second, p_first, n_items, position_bias=True, l2=1e-3):
    from emolib.study.preferences import fit_bradley_terry

    return fit_bradley_terry(second, first, p_first, n_items, position_bias=position_bias, l2=l2)


MISTAKES = [
    ("pool_mask_left_padding", pool_from_padding_edge, "left edge of the padded tensor"),
    ("pool_mask_right_padding", pool_with_padding, "padding positions"),
    ("pool_mask_right_padding", pool_ignoring_start, "first `start` tokens"),
    ("emotion_means_basic", means_nanmean, "value by value"),
    ("emotion_means_missing", means_silent_nan, "raise ValueError"),
    ("grand_mean_center_check", center_over_width, "width axis"),
    ("n_components_for_check", n_components_strict, "'>' where the rule is '>='"),
    ("project_out_check", project_first_only, "still has a component"),
    ("cosine_similarity_check", cosine_as_dot, "dot product"),
    ("add_vector_cleans_up", add_vector_no_finally, "finally"),
    ("add_vector_adds", add_vector_no_return, "did not change"),
    ("option_probs_check", option_probs_columns, "down each column"),
    ("bradley_terry_recovers", bt_wrong_sign, "backwards"),
]


@pytest.mark.parametrize("check,wrong,phrase", MISTAKES, ids=[w.__name__ for _, w, _ in MISTAKES])
def test_planted_mistakes_are_caught_with_a_helpful_message(check, wrong, phrase):
    with pytest.raises(checks.ExerciseError) as info:
        getattr(checks, check)(wrong)
    assert phrase in str(info.value), str(info.value)
    assert str(info.value).startswith("Exercise ")


def test_bradley_terry_check_values_are_fitted_not_fixed():
    """The truth in the BT check is recovered by the library fit, so a wrong loss cannot pass by luck."""
    from emolib.study.preferences import fit_bradley_terry

    true, f, g, p = checks._bt_data(bias=0.4)
    fit = fit_bradley_terry(f, g, p, 5, l2=1e-6)
    assert np.allclose(fit.scores, true - true.mean(), atol=0.02) and abs(fit.bias - 0.4) < 0.02


# ---- collecting submissions ------------------------------------------------------------------------
def test_collect_accepts_both_layouts_and_rejects_bad_input(tmp_path):
    nb = nbformat.v4.new_notebook()
    nbformat.write(nb, str(tmp_path / "alice.ipynb"))
    (tmp_path / "bob").mkdir()
    nbformat.write(nb, str(tmp_path / "bob" / "emotion_vectors.ipynb"))
    assert sorted(course.collect(tmp_path)) == ["alice", "bob"]
    with pytest.raises(FileNotFoundError):
        course.collect(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No .ipynb"):
        course.collect(tmp_path / "empty")
    nbformat.write(nb, str(tmp_path / "bob.ipynb"))
    with pytest.raises(ValueError, match="Two submissions"):
        course.collect(tmp_path)


# ---- end to end: nbgrader on the tiny model --------------------------------------------------------
def _with_blank(nb, numbers):
    out = nbformat.from_dict(nb)
    for c in out.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id", "")
        if any(gid == f"ex{n}-answer" for n in numbers):
            c.source = strip_solution(c.source)
    return out


def _with_padding_edge_mistake(nb):
    out = nbformat.from_dict(nb)
    for c in out.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1-answer":
            c.source = re.sub(r"position = .*\n", "position = torch.arange(attention_mask.shape[-1])  # from the edge\n",
                              c.source)
            assert "from the edge" in c.source
    return out


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One course, four submissions, one nbgrader autograde run (about half a minute on 2 cores)."""
    pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install -e '.[teach]')")
    mp = pytest.MonkeyPatch()
    mp.setenv("EMOLIB_TEACHING_MODEL", "tiny-random")
    root = tmp_path_factory.mktemp("course")
    release = course.build_course(root / "classroom", engine="nbgrader")
    src = nbformat.read(str(root / "classroom" / "source" / "emotion_vectors" / "emotion_vectors.ipynb"), 4)
    subs = root / "submissions"
    subs.mkdir()
    nbformat.write(src, str(subs / "solution.ipynb"))
    nbformat.write(nbformat.read(str(release), 4), str(subs / "blank.ipynb"))
    nbformat.write(_with_blank(src, [3, 5]), str(subs / "partial.ipynb"))
    nbformat.write(_with_padding_edge_mistake(src), str(subs / "mistake.ipynb"))
    (subs / "corrupt.ipynb").write_text('{"cells": [ a half-uploaded file')
    table = course.grade(root / "classroom", subs, engine="nbgrader").set_index("student")
    yield root, table
    mp.undo()


@pytest.mark.slow
def test_a_corrupt_submission_scores_zero_and_the_class_is_graded(graded):
    _, table = graded
    assert table.loc["corrupt", "total"] == 0 and table.loc["corrupt", "status"].startswith("not a readable notebook")
    assert (table.drop(index="corrupt")["status"] == "graded").all()
    assert table.loc["solution", "total"] == table.loc["solution", "max"]


@pytest.mark.slow
def test_nbgrader_release_equals_the_builtin_generator(graded):
    root, _ = graded
    rel = nbformat.read(str(root / "classroom" / "release" / "emotion_vectors" / "emotion_vectors.ipynb"), 4)
    ours = student_version(source_notebook())
    assert [c.source.rstrip() for c in rel.cells] == [c.source.rstrip() for c in ours.cells]


@pytest.mark.slow
def test_solution_scores_full_marks(graded):
    _, table = graded
    row = table.loc["solution"]
    assert row["total"] == row["max"] == sum(e.points for e in EXERCISES)
    assert row["ran_to_end"]


@pytest.mark.slow
def test_blank_notebook_scores_zero_everywhere_and_runs_to_the_end(graded):
    _, table = graded
    row = table.loc["blank"]
    assert all(row[f"ex{e.number}"] == 0 for e in EXERCISES)
    assert row["ran_to_end"]


@pytest.mark.slow
def test_a_blank_exercise_costs_only_its_own_points(graded):
    _, table = graded
    row = table.loc["partial"]
    for e in EXERCISES:
        assert row[f"ex{e.number}"] == (0 if e.number in (3, 5) else e.points), e.number
    assert row["ran_to_end"]


@pytest.mark.slow
def test_padding_edge_mistake_is_caught_with_its_message(graded):
    import json

    root, table = graded
    row = table.loc["mistake"]
    assert row["ex1"] < exercise(1).points and row["total"] == row["max"] - (exercise(1).points - row["ex1"])
    fails = json.loads((root / "classroom" / "failures.json").read_text())["mistake"]
    assert {f["exercise"] for f in fails} == {"ex1"}
    left = [f for f in fails if f["grade_id"] == "ex1-test-left-padding"]
    assert left and "left edge of the padded tensor" in left[0]["error"]


@pytest.mark.slow
def test_builtin_grader_agrees_with_nbgrader(graded, tmp_path, monkeypatch):
    """The fallback grader (no nbgrader) gives the same points on the same submission."""
    root, table = graded
    monkeypatch.setenv("EMOLIB_TEACHING_MODEL", "tiny-random")
    rows, ran = course.grade_notebook(root / "submissions" / "mistake.ipynb", tmp_path / "out.ipynb")
    assert ran
    by_ex = {f"ex{e.number}": sum(r["score"] for r in rows if r["exercise"] == f"ex{e.number}") for e in EXERCISES}
    assert by_ex == {k: table.loc["mistake"][k] for k in by_ex}
    out = nbformat.read(str(tmp_path / "out.ipynb"), 4)
    assert END_SENTINEL in out.cells[-1].outputs[0]["text"]


def test_builtin_course_and_cli_without_nbgrader(tmp_path, monkeypatch, capsys):
    from emolib.teaching.__main__ import main

    assert main(["build", "--course", str(tmp_path / "c"), "--engine", "builtin"]) == 0
    assert "student notebook" in capsys.readouterr().out
    rel = nbformat.read(str(tmp_path / "c" / "release" / "emotion_vectors" / "emotion_vectors.ipynb"), 4)
    assert [c.source for c in rel.cells] == [c.source for c in student_version(source_notebook()).cells]
    assert "c.Execute.timeout = 600" in (tmp_path / "c" / "nbgrader_config.py").read_text()
    monkeypatch.setattr(course, "have_nbgrader", lambda: False)
    with pytest.raises(RuntimeError, match="nbgrader is not installed"):
        course.build_course(tmp_path / "d", engine="nbgrader")
    assert course._engine("auto") == "builtin"
    with pytest.raises(ValueError, match="engine must be"):
        course.build_course(tmp_path / "e", engine="jupyter")
