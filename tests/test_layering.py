"""The shape of emolib: a small core, and layers around it that depend on it, never the reverse.

Every ``import`` in every module counts, including those inside functions (an import cycle hidden
in a function is still a cycle); only imports under ``if TYPE_CHECKING:`` are skipped, since they
never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import emolib

ROOT = Path(emolib.__file__).resolve().parent
CORE = {"emolib.models", "emolib.capture", "emolib.steering", "emolib.vectors", "emolib.chat", "emolib.stats",
        "emolib.emotions", "emolib.version"}
# layer -> the layers it may import
ALLOWED = {
    "core": {"core"},
    "monitor": {"core", "monitor"},
    "engines": {"core", "engines"},
    "study": {"core", "monitor", "engines", "study"},
    "teaching": {"core", "monitor", "study", "teaching"},
    "api": {"core", "monitor"},  # emolib/__init__.py: the public names
    "runner": {"core", "study", "runner"},  # emolib.pipeline, emolib.compare
    "data": set(),
}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def layer(mod: str) -> str:
    if mod in CORE:
        return "core"
    if mod == "emolib":
        return "api"
    if mod in ("emolib.pipeline", "emolib.compare"):  # they run the notebooks
        return "runner"
    head = mod.split(".")[1]
    return {"monitor": "monitor", "engines": "engines", "study": "study", "teaching": "teaching",
            "data": "data"}[head]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    return skip


def imports(mod: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("emolib"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emolib"):
            assert node.level == 0, f"{mod}: use absolute imports (line {node.lineno})"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m != mod}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports(m, p, known) if d in known} for m, p in mods.items()}


def test_every_module_belongs_to_a_layer():
    for m in modules():
        assert layer(m) in ALLOWED, m


def test_layers_only_import_what_they_may():
    bad = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in graph().items() for d in sorted(deps)
           if layer(d) not in ALLOWED[layer(m)]]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not sccs, f"import cycles: {sccs}"


def test_the_checker_catches_a_planted_violation(tmp_path):
    """The test above is not vacuous: a core module importing the study is reported."""
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from emolib.study.runs import save_figure\n")
    deps = imports("emolib.capture", fake, set(modules()))
    assert deps == {"emolib.study.runs"} and layer("emolib.study.runs") not in ALLOWED["core"]


def test_public_api_is_small_and_importable():
    assert 10 <= len(emolib.__all__) <= 15
    for name in emolib.__all__:
        assert getattr(emolib, name) is not None
