"""Shared fixtures. The tiny model is built locally (random Qwen2 + our tokenizer): no downloads."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A tiny randomly initialised Qwen2 model folder whose tokenizer holds the 17 SimpleTool tokens."""
    from tickcall.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, init_std=0.2,
                           tie_embeddings=False)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_path):
    """The lean decode loop alone (no grammar): its tests compare tokens with a plain full-forward
    decode. Constrained decoding is tested in test_constrain.py."""
    from tickcall.models.hf_engine import HFEngine

    return HFEngine(tiny_model_path, device="cpu", max_new_tokens=12, constrain=False)


ARENA_LIKE_TOOLS = [
    {"type": "function", "function": {
        "name": "move", "description": "Move the player.",
        "parameters": {"type": "object", "properties": {
            "direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
            "speed": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["direction"]}}},
    {"type": "function", "function": {
        "name": "fire", "description": "Fire at a target.",
        "parameters": {"type": "object", "properties": {"target": {"type": "integer"}},
                       "required": ["target"]}}},
    {"type": "function", "function": {
        "name": "aim", "description": "Aim.",
        "parameters": {"type": "object", "properties": {
            "angle": {"type": "number"}, "lead": {"type": "boolean"}, "note": {"type": "string"}}}}},
]


@pytest.fixture
def arena_tools():
    return [dict(t) for t in ARENA_LIKE_TOOLS]


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (loopback, as ``tickcall run`` starts it) for the tests that start actors; shut down
    after the module if it started it."""
    from tickcall.cluster import ray_session as session

    with session(num_cpus=2, logging_level="ERROR"):
        yield


BARE_ROOMS = ("models", "agent", "envs", "control_loop")


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything imported a room as a bare top-level package (``import models``): from
    the repository root that works by accident, but an installed tickcall has only ``tickcall.*``."""
    import sys

    bare = sorted(name for name in sys.modules if name.split(".")[0] in BARE_ROOMS)
    if bare:
        print(f"\nbare imports of tickcall rooms (use tickcall.<room>): {', '.join(bare[:10])}",
              file=sys.stderr)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def engine_bin() -> str:
    """The C++ reference engine, built once per session (scripts/build_reference_engine.sh)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", str(root / "scripts" / "build_reference_engine.sh")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"building the reference engine failed:\n{out.stdout}\n{out.stderr}"
    path = out.stdout.strip().splitlines()[-1]
    assert os.access(path, os.X_OK), path
    return path

