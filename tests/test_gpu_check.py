"""The GPU check on a CPU: the static-shape decode step of models/cuda_graphs.py against the lean step
(token for token), its clean fallback without CUDA, and scripts/gpu_check.sh end to end on scaled-down
models: from this checkout, and from a bare copy whose python lacks xgrammar, jsonschema and the
service's libraries (as a CUDA machine with only torch and transformers would)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tickcall.models.cuda_graphs import GraphedLM
from tickcall.models.format import Turn
from tickcall.models.hf_engine import HFEngine

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
TURNS = [
    Turn("x=+0.012 v=-0.340 a=+0.021 w=+0.551"),
    Turn("enemy at 3,4; hp=12", ["fire(target=2)"]),
    Turn("x=9"),
    Turn("target=7 dist=12.5", environment=["wind=3"]),
]
# what a CUDA machine with only torch + transformers lacks; the check must run without all of it
BLOCKED = ("xgrammar", "jsonschema", "rstr", "msgspec", "zmq", "ray", "fastapi", "gymnasium")


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    eng = HFEngine(tiny_model_path, device="cpu", max_new_tokens=10, constrain=False, threads=1)
    yield eng
    eng.close()


def _decide(engine, regs, lm) -> list[dict[str, list[int]]]:
    """Every (registration, turn) pair in one decide_batch, decoded with ``lm`` in the engine."""
    plain = engine.lm
    engine.lm = lm
    try:
        return [d.head_token_ids for d in engine.decide_batch([(r.handle, t) for r in regs for t in TURNS])]
    finally:
        engine.lm = plain


def test_static_step_decodes_the_same_tokens_as_the_lean_step(engine, arena_tools):
    # two registrations (two prefix groups, 4 and 2 heads), heads of natural lengths (rows leave the
    # batch at different steps: keep), then forced unequal lengths; twice, the second time on the
    # layout the first one built
    regs = [engine.register(arena_tools), engine.register(arena_tools[:2])]
    static = GraphedLM(engine.lm, 4096, capture=False)
    assert static.fallback is None
    for forced in (None, {"function": 3, "arg1": 7, "arg2": 1, "arg3": 10}):
        engine.forced_lengths = forced
        try:
            want = _decide(engine, regs, engine.lm)
            assert _decide(engine, regs, static) == want
            assert _decide(engine, regs, static) == want
        finally:
            engine.forced_lengths = None
    lengths = {len(ids) for d in want for ids in d.values()}
    assert len(lengths) > 1, "rows of one batch should finish at different steps"
    assert static.stats()["layouts"] == 1 and static.captures == 0


def test_graphs_fall_back_to_the_lean_step_without_cuda(engine, arena_tools):
    reg = engine.register(arena_tools)
    graphed = GraphedLM(engine.lm, 4096)  # capture asked for, on a CPU model
    assert "CUDA" in graphed.fallback
    assert _decide(engine, [reg], graphed) == _decide(engine, [reg], engine.lm)
    assert graphed.stats() == {
        "captures": 0,
        "replays": 0,
        "capture_ms": 0.0,
        "layouts": 0,
        "fallback": graphed.fallback,
    }


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_script_quick_tiny_writes_the_report(tmp_path):
    out = tmp_path / "gpu.json"
    res = _run(
        ["bash", str(SCRIPT), "--device", "cpu", "--quick", "--tiny", "--out", str(out)],
        {**os.environ, "PYTHON": sys.executable},
        tmp_path,
    )
    report = json.loads(out.read_text())
    assert report["schema"] == "tickcall.gpu_check/1" and report["complete"] is True
    assert {"name", "torch", "transformers", "cuda", "kind"} <= set(report["device"])
    assert report["device"]["kind"] == "cpu"
    cells = {(c["model"], c["mode"], c["heads"], c["concurrency"]) for c in report["results"]}
    assert cells == {
        (m, "eager", h, c) for m in ("smollm2-135m", "qwen2.5-0.5b") for h in (1, 8) for c in (1, 8)
    }
    for c in report["results"]:
        assert 0 < c["p50_ms"] <= c["p90_ms"] and c["n"] == 5
        assert c["generated_tokens"] == 8 * c["heads"] and c["rows"] == c["heads"] * c["concurrency"]
    # the graphs cells: fallen back on a CPU, said so, not timed twice under --quick
    assert {s["why"] for s in report["skipped"]} == {"fallback"} and len(report["skipped"]) == 8
    for m in report["models"].values():
        assert "CUDA" in m["graphs"]["fallback"] and m["dtype"] == "bfloat16"
    assert "P50 ms" in res.stdout and "smollm2-135m" in res.stdout


def test_runs_from_a_bare_copy_without_the_service_libraries(tmp_path):
    # the tree a CUDA machine gets (tickcall/, models/, scripts/), a python that cannot import the
    # libraries a forced decide does not need, no install of this checkout on its path
    copy = tmp_path / "repo"
    for room in ("tickcall", "models"):
        shutil.copytree(ROOT / room, copy / room, ignore=shutil.ignore_patterns("__pycache__", "shipped"))
    (copy / "scripts").mkdir()
    shutil.copy(SCRIPT, copy / "scripts")
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        f"    names = {BLOCKED!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.names:\n"
        "            raise ImportError(f'{name} is blocked by the test', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(block)}
    _run(
        [
            "bash",
            str(copy / "scripts" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--tiny",
            "--models",
            "qwen2.5-0.5b",
            "--concurrency",
            "1",
            "--reps",
            "2",
            "--out",
            str(out),
        ],
        env,
        tmp_path,
    )
    report = json.loads(out.read_text())
    assert report["imports"]["stand_ins"] == ["xgrammar", "jsonschema"] and report["constrain"] is False
    assert report["imports"]["tickcall_models"] == str(copy / "models")
    modes = {c["mode"]: c for c in report["results"] if c["heads"] == 8}
    assert set(modes) == {"eager", "graphs"}  # without --quick the fallen-back graphs cells are timed
    assert "CUDA" in modes["graphs"]["graphs"]["fallback"] and modes["graphs"]["same_tokens_as_eager"] == 1.0
    assert report["complete"] is True


def test_bad_input_is_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--concurrency", "0,x"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "integers separated by commas" in res.stderr
    res = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--warmup", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--warmup" in res.stderr


class _FakeCapture:
    """Stands in for torch.cuda's graph API on a CPU: a "capture" records which layout the step ran
    on, a replay runs the step again into the captured output (what a CUDA graph replay does)."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        import contextlib

        import torch

        fake = self
        self.fail = fail
        self.current = None
        forward = GraphedLM._forward

        class Graph:
            def __init__(self):
                self.replay_fn = None

            def replay(self):
                self.replay_fn()

        class graph_ctx:  # torch.cuda.graph(g)
            def __init__(self, g):
                self.g = g

            def __enter__(self):
                fake.current = self.g

            def __exit__(self, *exc):
                fake.current = None
                if fake.fail:
                    raise RuntimeError("operation not permitted when stream is capturing")

        def recording_forward(graphed, lay):
            out = forward(graphed, lay)
            if fake.current is not None:
                fake.current.replay_fn = lambda: lay.logits.copy_(forward(graphed, lay))
            return out

        class Stream:
            def wait_stream(self, other):
                pass

        monkeypatch.setattr(GraphedLM, "_forward", recording_forward)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph_ctx)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda: Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def test_captured_steps_replay_into_the_same_tokens(engine, arena_tools, monkeypatch):
    _FakeCapture(monkeypatch)
    regs = [engine.register(arena_tools)]
    graphed = GraphedLM(engine.lm, 4096)
    graphed.fallback = None  # pretend the model is on CUDA: the fake capture runs on the CPU
    want = _decide(engine, regs, engine.lm)
    assert _decide(engine, regs, graphed) == want  # captures on the first step, replays after
    assert _decide(engine, regs, graphed) == want  # the same layout: replays only
    stats = graphed.stats()
    assert stats["captures"] == 1 and stats["layouts"] == 1 and stats["fallback"] is None
    steps = max(len(ids) for d in want for ids in d.values()) - 1  # the first token comes from prefill
    assert stats["replays"] == 2 * steps  # the capturing step replays too (capture does not run the graph)


def test_a_failed_capture_falls_back_for_good(engine, arena_tools, monkeypatch):
    _FakeCapture(monkeypatch, fail=True)
    regs = [engine.register(arena_tools)]
    graphed = GraphedLM(engine.lm, 4096)
    graphed.fallback = None
    want = _decide(engine, regs, engine.lm)
    assert _decide(engine, regs, graphed) == want  # the decide in flight finishes on the static step
    assert "capture failed" in graphed.fallback and graphed.captures == 0
    assert _decide(engine, regs, graphed) == want  # and the next ones run the lean step
    assert graphed.replays == 0
