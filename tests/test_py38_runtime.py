"""The runtime side must run on JetPack 5's Python 3.8 (checked by hand there: see docs/jetson.md).
This guards it everywhere: no syntax or runtime-evaluated typing newer than 3.8 in the modules
that `vitac_deploy.runtimes` loads."""

import ast
import subprocess
import sys
from pathlib import Path

NEWER_THAN_38 = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _runtime_modules() -> list[Path]:
    code = ("import sys, vitac_deploy.runtimes, vitac_deploy.runtimes.onnxruntime, vitac_deploy.runtimes.gpu, "
            "vitac_deploy.runtimes.tensorrt.backend, vitac_deploy.planning, vitac_deploy.client; "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('vitac_deploy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [Path(p) for p in out.split()]


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (not evaluated under `from __future__ import annotations`)."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
    return {id(n) for r in roots for n in ast.walk(r)}


def test_runtime_side_has_nothing_newer_than_python_38():
    modules = _runtime_modules()
    assert any(p.name == "backend.py" and p.parent.name == "tensorrt" for p in modules)
    assert not any("reference" in p.parts or "exporters" in p.parts or "cli" in p.parts for p in modules)
    problems = []
    for path in modules:
        src = path.read_text()
        tree = ast.parse(src)
        annotated = any(isinstance(n, ast.AnnAssign) or (isinstance(n, ast.arg) and n.annotation is not None)
                        for n in ast.walk(tree))
        if annotated and "from __future__ import annotations" not in src:
            problems.append(f"{path.name}: annotations without `from __future__ import annotations`")
        skip = _annotation_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in NEWER_THAN_38:
                problems.append(f"{path.name}:{node.lineno}: {node.value.id}[...] evaluated at runtime (3.9+)")
            if type(node).__name__ in ("Match", "TryStar"):
                problems.append(f"{path.name}:{node.lineno}: {type(node).__name__} (3.10+)")
    assert not problems, "\n".join(problems)
