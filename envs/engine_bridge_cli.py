"""``python -m tickcall.envs.engine_bridge_cli check``: try an engine against the bridge, without a model.

    python -m tickcall.envs.engine_bridge_cli check --endpoint tcp://127.0.0.1:5560 --seconds 5 --json out.json

Binds the bridge, waits for an engine's hello, prints what it declared, then for ``--seconds``
watches its observations and sends its ``default_call`` (or ``--call JSON``) at ``--rate`` Hz,
measuring ack and result latency (ms). A lock-step engine is driven step by step instead
(LOCK-STEP: deterministic, not real time). Prints a table; ``--json FILE`` writes the figures.
Exit status 0 when the engine made no protocol error and every call ended ``done`` or ``failed``.

The module has the shape of a ``tickcall`` command (``HELP``, ``add_arguments``, ``run``), so it can
be registered as ``tickcall bridge``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HELP = "check an engine against the engine bridge (mode 1) without a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("check", help=HELP, description=HELP)
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5560", help="where the bridge binds")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to watch (real time)")
    p.add_argument("--steps", type=int, default=100, help="steps for a lock-step engine")
    p.add_argument("--rate", type=float, default=16.0, help="calls per second (Hz)")
    p.add_argument(
        "--call",
        default=None,
        help='JSON call to send, e.g. \'{"name": "wait", "arguments": {}}\' '
        "(default: the engine's default_call)",
    )
    p.add_argument(
        "--policy",
        choices=("call", "arena-expert"),
        default="call",
        help="call: send --call (or the default call) every time; arena-expert: the scripted "
        "arena expert reading the observation text (reference engine's arena)",
    )
    p.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the engine's hello")
    p.add_argument(
        "--curve-secret-key",
        default=None,
        metavar="FILE",
        help="the bridge's CURVE secret key file (.key_secret; tickcall serve --gen-keys DIR "
        "writes one); needed to bind a non-loopback address",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="write the figures as JSON")


def arena_text_expert(text: str) -> Any:
    """``envs.experts.ArenaExpert`` deciding from the arena's observation text
    (``tgt=SE d=2.4 aim=N cd=0 dcd=0 tl=3.0``) instead of the observation array."""
    from tickcall.models.calls import Call

    f = dict(kv.split("=", 1) for kv in text.split())
    if f["tgt"] != f["aim"]:
        return Call("aim", {"direction": f["tgt"]})
    gap = float(f["d"]) - 4.0
    if gap > 0:
        if f["dcd"] == "0":
            return Call("dash", {"direction": f["tgt"], "distance": 3 if gap > 2 else 2 if gap > 1 else 1})
        return Call("move", {"direction": f["tgt"], "speed": "run"})
    return Call("fire", {}) if f["cd"] == "0" else Call("wait", {})


def check(
    endpoint: str,
    *,
    seconds: float = 5.0,
    steps: int = 100,
    rate_hz: float = 16.0,
    call: dict[str, Any] | None = None,
    policy: str = "call",
    wait_s: float = 60.0,
    curve_secret_key: str | None = None,
    out: Any = None,
) -> dict[str, Any]:
    """Run the check (see module docstring); returns the figures. ``out``: where the table goes
    (None: the ``sys.stdout`` of the call, not the one of import time)."""
    out = sys.stdout if out is None else out
    from tickcall.envs.engine_bridge import BridgeConfig, EngineBridge, EngineCallError
    from tickcall.envs.engine_bridge_world import run_lockstep
    from tickcall.models.calls import Call

    cfg = BridgeConfig(endpoint=endpoint, curve_secret_key=curve_secret_key)
    with EngineBridge(cfg) as bridge:
        print(f"bridge listening on {bridge.endpoint}: start the engine (it connects there) ...", file=out)
        hello = bridge.wait_for_engine(wait_s)
        sess = bridge.session
        print(
            f"engine {hello.engine!r} {hello.engine_version} session {hello.session} "
            f"frame {hello.frame_hz:g} Hz, heartbeat {hello.heartbeat_ms:g} ms, "
            f"{'LOCK-STEP every ' + str(hello.lockstep) + ' frames' if hello.lockstep else 'real time'}",
            file=out,
        )
        for t in sess.tools:
            print(f"  tool {t.name}({', '.join(t.param_names)})", file=out)
        print(f"  observation format {hello.observation.format!r}: {hello.observation.description}", file=out)
        if hello.crowd:
            print(
                f"  a crowd (protocol 1.1): {len(hello.agents or ())} agents at hello, at most "
                f"{hello.crowd_size}; one call per agent per round",
                file=out,
            )
        default = hello.default_call
        use = (
            Call.from_dict(call)
            if call
            else Call(default.name, dict(default.arguments))
            if default
            else Call(sess.tools[0].name, {})
        )
        t0 = time.monotonic()
        obs0 = bridge.stats()["counts"]["obs_received"]
        handles = []
        texts = []

        def decide(text: str) -> Any:
            texts.append(text)
            return arena_text_expert(text) if policy == "arena-expert" else use

        if hello.lockstep:
            res = run_lockstep(bridge, decide, steps)
            lockstep_states = res.states
            end = time.monotonic() + 2.0  # an episode that ended on the last step is reported just after
            while hello.lockstep and not bridge.episodes and steps and time.monotonic() < end:
                time.sleep(0.01)
        else:
            lockstep_states = None
            next_at = t0
            while hello.crowd and time.monotonic() - t0 < seconds:  # one call per agent per round
                for agent, obs in bridge.latest_observations().items():
                    text = bridge.observation_text(obs)
                    if len(texts) < 3:
                        texts.append(text)
                    decided = arena_text_expert(text) if policy == "arena-expert" else use
                    handles.append(bridge.send_call(decided, agent=agent, obs_seq=obs.seq, obs_t_ms=obs.t_ms))
                next_at += 1.0 / rate_hz
                time.sleep(max(0.0, next_at - time.monotonic()))
            while not hello.crowd and time.monotonic() - t0 < seconds:
                obs = bridge.latest_observation()
                if obs is not None and (not texts or texts[-1] != bridge.observation_text(obs)):
                    texts.append(bridge.observation_text(obs))
                decided = decide(texts[-1]) if policy == "arena-expert" and texts else use
                handles.append(bridge.send_call(decided))
                next_at += 1.0 / rate_hz
                time.sleep(max(0.0, next_at - time.monotonic()))
            for h in handles:
                with contextlib.suppress(EngineCallError):  # its state is counted in the stats
                    h.result.result(timeout=bridge.config.result_timeout_ms / 1e3 + 1)
        elapsed = time.monotonic() - t0
        stats = bridge.stats()
    c = stats["counts"]
    report = {
        "engine": stats["engine"] or {"name": hello.engine, "session": hello.session},
        "endpoint": stats["endpoint"],
        "elapsed_s": round(elapsed, 3),
        "call": use.to_dict(),
        "obs_received": c["obs_received"] - obs0,
        "obs_hz": round((c["obs_received"] - obs0) / elapsed, 2),
        "calls": {k: c[k] for k in ("calls", "done", "failed", "rejected", "lost", "timeout", "in_flight")},
        "ack_ms": stats["ack_ms"],
        "result_ms": stats["result_ms"],
        "ping_rtt_ms": stats["ping_rtt_ms"],
        "engine_errors": stats["errors_by_code"],
        "episodes": stats["episodes"],
        "lockstep_states": lockstep_states,
        "sample_observations": texts[:3],
    }
    if hello.crowd:
        report["obs_by_agent"] = stats.get("obs_by_agent", {})
    report["ok"] = not report["engine_errors"] and c["calls"] == c["done"] + c["failed"]
    _table(report, out)
    return report


def _table(r: dict[str, Any], out: Any) -> None:
    def fmt(p: dict[str, Any]) -> str:
        return (
            "-"
            if not p.get("n")
            else f"p50 {p['p50']}  p90 {p['p90']}  p99 {p['p99']}  max {p['max']}  (n {p['n']})"
        )

    rows = [
        ("observations", f"{r['obs_received']} in {r['elapsed_s']} s ({r['obs_hz']} /s)"),
        *(
            [
                (
                    "agents",
                    f"{len(r['obs_by_agent'])}, observations per agent "
                    f"{min(r['obs_by_agent'].values())}..{max(r['obs_by_agent'].values())}",
                )
            ]
            if r.get("obs_by_agent")
            else []
        ),
        ("calls", "  ".join(f"{k} {v}" for k, v in r["calls"].items())),
        ("ack ms", fmt(r["ack_ms"])),
        ("result ms", fmt(r["result_ms"])),
        ("ping rtt ms", fmt(r["ping_rtt_ms"])),
        ("engine protocol errors", json.dumps(r["engine_errors"]) if r["engine_errors"] else "none"),
        (
            "episodes",
            str(len(r["episodes"]))
            + ("  returns " + " ".join(f"{e['return']:.2f}" for e in r["episodes"]) if r["episodes"] else ""),
        ),
        ("sample observation", r["sample_observations"][0] if r["sample_observations"] else "-"),
        ("verdict", "OK" if r["ok"] else "PROBLEMS (see above)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}", file=out)


def bad_flag(args: argparse.Namespace) -> str | None:
    """The first flag that cannot work, as the line to print (what is wrong; what to write), or None.

    Checked before the bridge binds: a wrong ``--json`` path used to fail after the whole check, an
    endpoint that is not one read as an exposed bind, ``--seconds 0`` waited for an engine anyway."""
    from tickcall.agent.config_check import check_endpoint

    try:
        check_endpoint("--endpoint", args.endpoint)
    except ValueError:
        return (
            f"--endpoint {args.endpoint!r} is not a ZMQ endpoint; write e.g. --endpoint tcp://127.0.0.1:5560"
        )
    for flag, value in (("--seconds", args.seconds), ("--rate", args.rate), ("--wait-s", args.wait_s)):
        if not value > 0:  # also NaN
            return f"{flag} {value:g} must be above 0; e.g. {flag} {5 if flag != '--rate' else 16}"
    if args.steps < 1:
        return f"--steps {args.steps} is too small; use 1 or more"
    if args.call is not None:
        try:
            call = json.loads(args.call)
        except json.JSONDecodeError as exc:
            return f'--call is not valid JSON ({exc}); write e.g. --call \'{{"name": "wait", "arguments": {{}}}}\''
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return '--call must be a JSON object with a "name" (and "arguments"); e.g. --call \'{"name": "wait"}\''
    if args.curve_secret_key is not None and not Path(args.curve_secret_key).is_file():
        return f"--curve-secret-key {args.curve_secret_key}: no such file; tickcall serve --gen-keys DIR writes one"
    if args.json:
        target = Path(args.json)
        if target.is_dir():
            return f"--json {args.json} is a folder; give a file path"
        if not (target.parent if str(target.parent) else Path(".")).is_dir():
            return (
                f"--json {args.json}: folder {target.parent} does not exist; create it or pick another path"
            )
    return None


def run(args: argparse.Namespace) -> int:
    """Exit 0: the engine passed; 1: it did not (or never came, or was refused); 2: bad flags.
    Every failure is one line on stderr (``tickcall bridge check: ...``), never a traceback."""
    import zmq
    from tickcall.envs.engine_bridge_config import BridgeConfigError
    from tickcall.envs.engine_bridge_state import EngineRefused

    def fail(line: str, code: int) -> int:
        print(f"tickcall bridge check: {' '.join(line.split())}", file=sys.stderr)
        return code

    problem = bad_flag(args)
    if problem is not None:
        return fail(problem, 2)
    call = json.loads(args.call) if args.call else None
    try:
        report = check(
            args.endpoint,
            seconds=args.seconds,
            steps=args.steps,
            rate_hz=args.rate,
            call=call,
            policy=args.policy,
            wait_s=args.wait_s,
            curve_secret_key=args.curve_secret_key,
        )
    except BridgeConfigError as exc:  # the bind policy (an exposed endpoint without CURVE), a bad key file
        return fail(str(exc), 2)
    except EngineRefused as exc:
        return fail(f"the engine's hello was refused ({exc}); fix the engine and start it again", 1)
    except TimeoutError:
        return fail(
            f"no engine said hello at {args.endpoint} within {args.wait_s:g} s; start the engine "
            "(it connects there), or wait longer with --wait-s",
            1,
        )
    except zmq.ZMQError as exc:  # the port is taken, an address this machine does not have
        return fail(f"cannot bind {args.endpoint}: {exc.strerror}; pick a free port", 1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tickcall.envs.engine_bridge_cli", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
