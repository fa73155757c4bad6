"""The papermill runner on throw-away notebooks: order, parameters, skipping, forcing, failure."""

from __future__ import annotations

import json

import nbformat
import pytest

from emolib.pipeline import STAGES, PipelineError, apply_overrides, load_profile, run_pipeline


def _notebook(path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = ''\nrun_dir = ''\nfigures_dir = ''\nmodel = ''\nvalue = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def setup(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for st in STAGES[:2]:
        _notebook(nbs / f"{st}.ipynb",
                  "import json, pathlib\n"
                  f"p = pathlib.Path(run_dir) / '{st}.out'\n"
                  "n = int(p.read_text()) + 1 if p.exists() else 1\n"
                  "p.write_text(str(n))\n"
                  "(pathlib.Path(run_dir) / 'seen.json').write_text(json.dumps({'model': model, 'value': value}))\n")
    profs = tmp_path / "profiles"
    profs.mkdir()
    (profs / "t.toml").write_text(f'[common]\nmodel = "m0"\n\n["{STAGES[0]}"]\nvalue = 1\n\n["{STAGES[1]}"]\nvalue = 2\n')
    return tmp_path, nbs, profs


def _run(tmp, nbs, profs, **kw):
    return run_pipeline("t", run=tmp / "run", notebooks_dir=nbs, profiles_dir=profs, report=False, **kw)


def test_runs_in_order_then_skips_then_forces(setup):
    tmp, nbs, profs = setup
    res = _run(tmp, nbs, profs)
    assert [r.status for r in res] == ["ok", "ok"]
    assert json.loads((tmp / "run" / "seen.json").read_text()) == {"model": "m0", "value": 2}
    assert (tmp / "run" / "notebooks" / f"{STAGES[0]}.ipynb").exists()
    res = _run(tmp, nbs, profs)
    assert [r.status for r in res] == ["skipped", "skipped"]
    assert (tmp / "run" / f"{STAGES[0]}.out").read_text() == "1"
    _run(tmp, nbs, profs, force=True)
    assert (tmp / "run" / f"{STAGES[0]}.out").read_text() == "2"
    log = (tmp / "run" / "pipeline.log").read_text()
    assert "up to date" in log and f"{STAGES[1]}: ok in" in log


def test_a_run_with_figures_outside_publishes_its_notebooks_and_log(setup):
    tmp, nbs, profs = setup
    figs = tmp / "figs"
    _run(tmp, nbs, profs, figures=figs)
    assert (figs / "notebooks" / f"{STAGES[0]}.ipynb").exists()
    log = (figs / "pipeline.log").read_text()
    assert f"{STAGES[1]}: ok in" in log and str(tmp) not in log
    # a run whose figures live inside the run folder publishes nothing
    _run(tmp, nbs, profs, force=True)
    assert not (tmp / "run" / "figures" / "pipeline.log").exists()


def test_changed_parameter_reruns_that_stage_and_downstream(setup):
    tmp, nbs, profs = setup
    _run(tmp, nbs, profs)
    res = _run(tmp, nbs, profs, sets=[f"{STAGES[0]}.value=5"])
    assert [r.status for r in res] == ["ok", "ok"]  # upstream change invalidates the next stage too
    res = _run(tmp, nbs, profs, sets=[f"{STAGES[0]}.value=5", f"{STAGES[1]}.value=7"])
    assert [r.status for r in res] == ["skipped", "ok"]


def test_failed_stage_stops_and_keeps_notebook(setup):
    tmp, nbs, profs = setup
    _notebook(nbs / f"{STAGES[0]}.ipynb", "raise ValueError('the notebook says no')")
    with pytest.raises(PipelineError, match="the notebook says no"):
        _run(tmp, nbs, profs)
    assert (tmp / "run" / "notebooks" / f"{STAGES[0]}.ipynb").exists()
    assert not (tmp / "run" / f"{STAGES[1]}.out").exists()
    rec = json.loads((tmp / "run" / "stages" / f"{STAGES[0]}.json").read_text())
    assert rec["status"] == "failed"


def test_overrides_and_unknowns():
    prof = {"common": {"model": "a"}, **{s: {} for s in STAGES}}
    prof[STAGES[0]]["batch_size"] = 4
    out = apply_overrides(prof, ["model=b", "batch_size=8", f"{STAGES[2]}.extra=true"])
    assert out["common"]["model"] == "b" and out[STAGES[0]]["batch_size"] == 8 and out[STAGES[2]]["extra"] is True
    with pytest.raises(PipelineError, match="no such parameter"):
        apply_overrides(prof, ["nonsense=1"])
    with pytest.raises(PipelineError, match="Unknown profile"):
        load_profile("no-such-profile")


def test_shipped_profiles_parse():
    for name in ("smoke", "default", "paper"):
        prof = load_profile(name)
        assert prof["common"]["model"]
        assert set(STAGES) <= set(prof)


def test_report_is_generated_from_metrics_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emolib.study.report import build_report
    from emolib.study.runs import save_figure, write_json, write_metrics

    run, figs = tmp_path / "run", tmp_path / "figs"
    write_json(run / "stages" / f"{STAGES[0]}.json", {"stage": STAGES[0], "status": "ok", "seconds": 12.0})
    write_metrics(run, STAGES[0], [{"key": "k", "label": "a measured thing", "ours": 0.4321, "paper": 0.81,
                                    "note": "n=45"}])
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, "01_line", {"x": [0, 1]}, "A line that goes up.", figs, stage=STAGES[0])
    plt.close(fig)
    out = build_report(run, figs, profile="t")
    text = out.read_text()
    assert "| 01_generate_stories | a measured thing | 0.432 | 0.81 | n=45 |" in text
    assert "| 01_generate_stories | ok | 12 |" in text
    assert "A line that goes up." in text and "(../figs/01_line.png)" in text
    copy = (figs / "REPORT.md").read_text()  # figures outside the run get a copy with local links
    assert "(01_line.png)" in copy
    with pytest.raises(ValueError, match="lacks"):
        write_metrics(run, STAGES[0], [{"key": "k", "label": "no number"}])


def test_published_notebooks_name_files_by_their_repo_path(tmp_path):
    """A notebook copied beside the committed figures must not carry this machine's checkout path."""
    from emolib.pipeline import repo_relative

    root = tmp_path / "checkout"
    text = (f'{{"run_dir": "{root}/runs/default", "input_path": "{root}/notebooks/01.ipynb", "cwd": "{root}", '
            '"other": "/usr/lib/x"}')
    out = repo_relative(text, root)
    assert str(root) not in out
    assert '"runs/default"' in out and '"notebooks/01.ipynb"' in out and '"cwd": "."' in out
    assert "/usr/lib/x" in out  # paths outside the checkout are left alone
