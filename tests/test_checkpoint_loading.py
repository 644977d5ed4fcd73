"""Checkpoints are data, never code: every ``torch.load`` in the project passes ``weights_only=True``.

A static check over the source (each call, found by its syntax tree) plus what that setting buys: a
checkpoint whose pickle would run code is refused, and the code never runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("agent", "control_loop", "envs", "models", "tickcall", "scripts", "examples")


def _torch_loads() -> list[tuple[str, int, ast.Call]]:
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    found.append((str(path.relative_to(ROOT)), node.lineno, node))
    return found


def test_every_torch_load_is_weights_only():
    calls = _torch_loads()
    assert calls, "no torch.load found: the scan is broken"
    for where, line, call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        value = kw.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"{where}:{line}: torch.load without weights_only=True"
        )


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.marker),))


def test_weights_only_refuses_a_checkpoint_that_runs_code(tmp_path):
    torch = pytest.importorskip("torch")
    _RunsCode.marker = str(tmp_path / "ran")
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "payload": _RunsCode()}, bad)
    with pytest.raises(Exception, match="(?i)weights only|unpickl"):
        torch.load(bad, weights_only=True)
    assert not (tmp_path / "ran").exists()
