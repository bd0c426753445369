"""The house: its rooms import, and no module of qadtr_core imports one that imports it back."""
import ast
import importlib
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "qadtr_core"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the qadtr_core modules it imports (``from . import x`` of a submodule is an arrow to x only)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                for t in subs + ([target] if len(subs) < len(node.names) else []):
                    if t in mods and t != name:
                        edges[name].add(t)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in mods and a.name != name)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(import_graph()) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_the_rooms_import_and_old_names_still_resolve():
    for room in ("qadtr_core.build.cli", "qadtr_core.claims", "qadtr_core.evaluation", "qadtr_core.build"):
        importlib.import_module(room)
    import qadtr_core
    from qadtr_core import jobs, scorecard, threats
    assert jobs.__name__ == "qadtr_core.build.jobs" and threats.__name__ == "qadtr_core.evaluation.threats"
    assert scorecard.verdict_c3 and scorecard.load_claims and qadtr_core.robustness.evaluate_threats


def test_every_claim_has_a_module_with_its_rule():
    from qadtr_core.claims import CLAIMS, VERDICTS, rule_text
    assert list(CLAIMS)[:7] == [f"C{i}" for i in range(1, 8)]
    for cid in CLAIMS:
        assert VERDICTS[cid].__module__.startswith("qadtr_core.claims.") and rule_text(cid).startswith(f"**{cid}**")
