"""The ``tickcall run`` job: env + loop actor + policy service + model, wired together, then the report.

    from tickcall.control_loop.config import load_run_config
    from tickcall.job import run_job
    outcome = run_job(load_run_config("configs/run-noop.yaml"))
    outcome.report["outcomes"], outcome.paths["report"]

This is the composition root's job: it is the only code that holds a policy service, a loop and a
world at once. Steps: start Ray (if needed, ``tickcall.cluster``; or join ``ray_address``)
-> resolve the model (``--model`` or the shipped default) -> start the policy service actor (unless
``service.endpoint`` names a running one; ``replicas`` > 1: that many, ``agent.replicas.start_replicas``)
-> with ``cascade``, the big model's service too (``control_loop.cascade``; unless ``cascade.endpoint``)
-> start the loop actor (it builds the world and registers the tools; a multi-agent env gets the crowd
loop, ``control_loop.crowd``) -> run, printing a live progress line -> write ``report.json``,
``ticks.jsonl`` and plots into the report folder -> stop what was started.

A multi-agent env (``tickcall.world.is_crowd_env``: ``tickcall/CrowdArena-v0``, ``pettingzoo:...``) runs
``agents`` agents in one loop: one record per agent per tick in ``ticks.jsonl``; the service started here
takes ``max_streams_per_client`` and ``max_batch`` of at least the agent count, so every agent of a tick
can be queued and decoded in one batch (docs/multi-agent.md).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tickcall.cluster import init_ray
from tickcall.control_loop.config import DEFAULT_HISTORY, MODEL_FREE, RunConfig
from tickcall.control_loop.loop import LoopSettings
from tickcall.control_loop.progress import ProgressPrinter
from tickcall.control_loop.records import TickRecord
from tickcall.control_loop.report import write_report
from tickcall.control_loop.stats import cascade_summary, episode_curve, summarize, swap_marks
from tickcall.world import (
    WorldSpec,
    check_spec,
    crowd_world_factory,
    is_crowd_env,
    make_crowd_world,
    world_factory,
)

if TYPE_CHECKING:  # tickcall.training imports the training stack: only a distilling run loads it
    from tickcall.training import Distiller, DistillSettings


class RunError(RuntimeError):
    """The run cannot start (no model, service unreachable...): the message says what to do."""


class RunInterrupted(RunError):
    """Ctrl-C before the loop ran a tick: nothing to report (``tickcall run`` exits 130)."""


@dataclass
class RunOutcome:
    report: dict[str, Any]
    records: list[TickRecord]
    paths: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C stopped the loop early; the report covers the ticks that ran


def default_report_dir() -> str:
    return str(Path("reports") / f"run-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")


def resolve_model(cfg: RunConfig) -> str | None:
    """The model folder: ``cfg.model``, else the shipped default; ``cfg.model`` as given (None) for the
    backends without a model (noop, random). The folder is checked here, in the driver
    (``models.folder_check``), before any actor starts. Raises RunError (``no_model_message`` when the
    env has no shipped model)."""
    if cfg.backend in MODEL_FREE:
        return cfg.model
    if cfg.model is not None:
        path = cfg.model
    else:
        path = shipped_default_model(cfg.env)
        if path is None or not Path(path).exists():
            raise RunError(no_model_message(cfg.env))
    ready_model_folder(str(path))
    return str(path)


def ready_model_folder(path: str, what: str = "") -> None:
    """Check a model folder in the driver, before any actor starts (``models.folder_check``), and merge
    an adapter folder with its base into the cache (``models.adapters``): the first merge takes ~30-60 s,
    done here with its progress line so a service actor finds it cached instead of overrunning its
    start-up timeout. ``what``: a prefix for the error line. Raises RunError (one line)."""
    from tickcall.models.adapters import is_adapter_folder, materialize
    from tickcall.models.folder_check import ModelFolderError, check_model_folder

    try:
        check_model_folder(path)
        if is_adapter_folder(path):
            materialize(path)
    except ModelFolderError as exc:
        raise RunError(f"{what}{exc}") from None
    except Exception as exc:
        raise RunError(f"{what}{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def no_model_message(env_id: str | None, problem: str | None = None) -> str:
    """The one line for an env without a usable shipped model, naming the three ways on (shared by
    ``tickcall run`` and ``tickcall eval``). ``problem``: what went wrong, when not simply "none ships"."""
    try:
        from tickcall.models.shipped import SHIPPED
    except ImportError:
        SHIPPED = {}
    env = env_id or "the default env"
    if env.startswith("engine:") and problem is None:
        # an engine's game is known only once it connects, so no shipped model can be picked for it
        return (
            f"an engine's model is not picked for it: name one with --model PATH (the reference engine's "
            f"arena plays with --model models/shipped/{SHIPPED.get('tickcall/Arena-v0', 'tickcall-arena')}"
            "), or use --backend random (legal random calls, no model)"
        )
    what = problem or (f"no model ships for {env} (shipped: {', '.join(SHIPPED) or 'none'})")
    return (
        f"{what}; choose one: --backend random (legal random calls, no model), "
        f"--model PATH (a SimpleTool-format model folder), or train one with `tickcall train --env {env}`"
    )


def prepare_report_dir(folder: str) -> str:
    """Create the report folder and prove it writable now, so a run is never thrown away at its end."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tickcall-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(
            f"report folder {out} is not writable ({exc.strerror or exc}); "
            "pass --report DIR with a folder you can write"
        ) from None
    return str(out)


def resolve_history(cfg: RunConfig, model: str | None) -> int:
    """History items per turn: ``cfg.history`` when set, else the ``history_len`` the model was trained
    with (its ``tickcall.json``), else ``DEFAULT_HISTORY``. A student trained without a history line
    makes mostly illegal calls when shown one, so the model's own setting is the safe default."""
    if cfg.history is not None:
        return int(cfg.history)
    if model is not None:
        from tickcall.models.loading import read_model_meta

        try:
            value = read_model_meta(Path(model).expanduser()).get("history_len")
        except (OSError, ValueError, AttributeError):  # unreadable: the engine reports it when it loads
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return DEFAULT_HISTORY


def shipped_default_model(env_id: str | None = None) -> str | None:
    """``models.shipped.default_model_path(env_id)`` when the project ships a model for it, else None."""
    try:
        from tickcall.models.shipped import default_model_path
    except ImportError:
        return None
    try:
        path = default_model_path(env_id)
    except KeyError:  # no shipped model for this env
        raise RunError(no_model_message(env_id)) from None
    except Exception as exc:  # its folder is missing from this checkout, or unreadable
        raise RunError(no_model_message(env_id, f"the shipped model is not usable ({exc})")) from None
    return None if path is None else str(path)


def resolve_cascade(cfg: RunConfig) -> dict[str, Any] | None:
    """The cascade as the run uses it, checked in the driver before anything starts: the big model's
    folder, the threshold (``auto``: ``cascade.calibrate`` of ``calibrate_from``) and where it came from.
    None when the cascade is off. Raises RunError (one line)."""
    c = cfg.cascade
    if c is None:
        return None
    from tickcall.control_loop.cascade import calibrate

    model = c.model
    if c.endpoint is None and c.backend not in MODEL_FREE:
        ready_model_folder(str(model), "the cascade's big model: ")
    calibration = None
    if c.threshold == "auto":
        try:
            threshold, calibration = calibrate(str(c.calibrate_from), c.calibrate_target)
        except ValueError as exc:
            raise RunError(f"cascade calibration: {exc}") from None
        source = f"calibrated from {c.calibrate_from} (target agreement {c.calibrate_target:g})"
    else:
        threshold, source = float(c.threshold), "given"
    return {"model": model, "threshold": threshold, "threshold_source": source, "calibration": calibration}


def is_engine_crowd(cfg: RunConfig) -> bool:
    """An engine's NPC crowd over the bridge: ``engine:...`` with ``agents`` > 1 (docs/engine-bridge.md)."""
    return cfg.env.startswith("engine:") and cfg.agents is not None and cfg.agents > 1


def crowd_size(cfg: RunConfig) -> int | None:
    """The number of agents of a multi-agent run, None for a single-agent env. The crowd world is built
    once here, in the driver, and closed (a wrong id, agent count or env is one line before any actor
    starts); an engine's crowd (``is_engine_crowd``) is ``agents`` (the engine connects to the loop actor
    only). Raises RunError for ``agents``/``replicas`` on a single-agent env and for a cascade on a crowd."""
    if cfg.cascade is not None and (is_engine_crowd(cfg) or is_crowd_env(cfg.env)):
        raise RunError(
            f"{cfg.env} is a multi-agent env and the cascade drives one agent: drop cascade (--cascade-*)"
        )
    if is_engine_crowd(cfg):
        check_spec(cfg.env)  # the endpoint's form
        return cfg.agents
    if cfg.env.startswith("engine:") and cfg.replicas > 1:
        raise RunError(
            f"--replicas {cfg.replicas} is for multi-agent runs: an engine's crowd is --agents N (N > 1); "
            "one engine agent runs with --replicas 1"
        )
    if cfg.env.startswith("engine:"):
        return None  # one agent (agents 1 or unset)
    if not is_crowd_env(cfg.env):
        if cfg.agents is not None:
            raise RunError(
                f"--agents {cfg.agents} (agents) is for multi-agent envs (tickcall/CrowdArena-v0, "
                f"pettingzoo:MODULE:FUNCTION); {cfg.env} has one agent: drop --agents or pick a multi-agent env"
            )
        if cfg.replicas > 1:
            raise RunError(
                f"--replicas {cfg.replicas} (replicas) is for multi-agent envs (tickcall/CrowdArena-v0, "
                f"pettingzoo:MODULE:FUNCTION); {cfg.env} has one agent: run with --replicas 1"
            )
        return None
    world = make_crowd_world(crowd_spec(cfg))
    try:
        return len(world.agents)
    finally:
        world.close()


def crowd_spec(cfg: RunConfig) -> WorldSpec:
    """The crowd world's spec (``tickcall.world.make_crowd_world``)."""
    return WorldSpec(
        env=cfg.env, env_kwargs=world_kwargs(cfg), seed=cfg.seed, max_episodes=cfg.episodes, agents=cfg.agents
    )


def crowd_factory(cfg: RunConfig) -> Any:
    """The crowd loop actor's picklable world factory: an engine's NPCs over the bridge
    (``bridge_world.make_engine_crowd_world``, waits for the engine in the actor) or a multi-agent env
    (``tickcall.world.crowd_world_factory``)."""
    if is_engine_crowd(cfg):
        import functools

        from tickcall.bridge_world import make_engine_crowd_world

        return functools.partial(make_engine_crowd_world, crowd_spec(cfg))
    return crowd_world_factory(crowd_spec(cfg))


DEFAULT_STREAMS = 16  # agent.config.ServeConfig.max_streams_per_client (what `tickcall serve` takes)


CROWD_GATHER_MS = 5.0  # the loop sends a tick's decides one after another: 64 take ~3 ms to arrive


def crowd_serve_config(agents: int) -> dict[str, Any]:
    """What a crowd's service(s) take beyond the defaults: ``max_streams_per_client`` (one stream per
    agent: every agent's decide may be queued at once) and ``max_batch`` (all agents of a tick in one
    batch), each at least ``agents``; ``gather_ms`` ``CROWD_GATHER_MS``: once a tick's batch held every
    agent, the next tick's first decides wait that long for the others rather than start a batch of a
    few and leave the rest a whole decode behind."""
    from tickcall.agent.config import ServeConfig

    return {
        "max_streams_per_client": max(ServeConfig.max_streams_per_client, agents),
        "max_batch": max(ServeConfig.max_batch, agents),
        "gather_ms": max(ServeConfig.gather_ms, CROWD_GATHER_MS),
    }


def crowd_int8(spec: dict[str, Any], agents: int | None) -> bool:
    """Whether a crowd's model runs with int8 weights: more than one agent, the transformers backend on
    the CPU, and no ``precision`` in ``engine_options``. A crowd's batch is mostly the prefill of every
    agent's turn (matmul-bound); int8 weights halve it on the arena student with identical calls
    (docs/multi-agent.md has the figures), where a lone agent's small model keeps float32."""
    return (
        (agents or 1) > 1
        and spec.get("backend") == "transformers"
        and spec.get("device", "cpu") == "cpu"
        and "precision" not in spec
    )


def start_replica_set(cfg: RunConfig, spec: dict[str, Any], limits: dict[str, Any]) -> Any:
    """``cfg.replicas`` policy services placed by Ray (``agent.replicas.start_replicas``), each with the
    crowd's limits. Raises RunError (one line)."""
    try:
        from tickcall.agent.replicas import start_replicas
    except ImportError as exc:
        raise RunError(
            f"--replicas {cfg.replicas} needs tickcall.agent.replicas, which this install lacks ({exc}); "
            "run with --replicas 1"
        ) from None
    config = {"max_restarts": cfg.service.max_restarts, **limits}
    try:
        return start_replicas(spec, cfg.replicas, config=config)
    except Exception as exc:
        raise RunError(f"the policy service replicas did not start: {root_cause(exc)}") from exc


def replica_stats(replica_set: Any) -> list[dict[str, Any]]:
    """Each replica's service counters (``{}`` for one that does not answer: it died or was killed)."""
    import ray

    out = []
    for handle in replica_set.handles:
        try:
            out.append(ray.get(handle.stats.remote(), timeout=10))
        except Exception:
            out.append({})
    return out


def build_report(
    cfg: RunConfig,
    result: dict[str, Any],
    records: list[TickRecord],
    *,
    model: str | None,
    service: dict[str, Any],
    cascade: dict[str, Any] | None = None,
    crowd: dict[str, Any] | None = None,
    distill: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``report.json``: the statistics (``stats.summarize``) plus what ran and the episodes; with a
    cascade, its block (``stats.cascade_summary``; ``cascade``: ``resolve_cascade``'s answer plus the big
    service's description); a multi-agent run's ``crowd`` block (agents asked for and seen, replicas,
    their endpoints, the replica router's figures)."""
    stats = summarize(records, cfg.rate_hz, result["elapsed_s"])
    episodes = [
        {"return": round(float(e["return"]), 4), "length": int(e["length"])}
        for e in result.get("episodes", [])
    ]
    report = {
        **stats,
        "episodes": episodes,
        "episode_in_progress": result.get("current_episode"),
        "env": cfg.env,
        "model": model,
        "backend": cfg.backend,
        "deadline_ms": cfg.effective_deadline_ms,
        "in_flight": cfg.in_flight,
        "fallback": cfg.fallback,
        "stopped": result.get("stopped"),
        "stray_replies": result.get("stray_replies", 0),
        "warnings": result.get("warnings", []),
        "service": service,
        "client": result.get("client", {}),
        "world": result.get("world", {}),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
    }
    if crowd is not None:
        report["crowd"] = crowd
    if cascade is not None:
        assert cfg.cascade is not None
        big = (result.get("cascade") or {}).get("big") or {}
        block = cascade_summary(records, big, target=cfg.cascade.calibrate_target)
        block.update(
            {
                "threshold": cascade["threshold"],
                "threshold_source": cascade["threshold_source"],
                "max_age_ms": cfg.cascade.max_age_ms,
                "big_rate_hz": cfg.cascade.big_rate_hz,
                "intent": cfg.cascade.intent,
                "big_model": cascade.get("model"),
                "big_service": cascade.get("service", {}),
            }
        )
        if cascade.get("calibration") is not None:
            block["calibration"] = cascade["calibration"]
        report["cascade"] = block
        rounds = (distill or {}).get("rounds") or []
        swaps = swap_report(records, rounds)
        if swaps or distill is not None:
            report["swaps"] = swaps
        if distill is not None:
            report["distill"] = {
                **distill,
                "curve": episode_curve(records, [e["return"] for e in episodes]),
            }
    if "swaps" not in report:  # a service hot-swapped outside a cascade (tickcall serve --swap-file)
        marks = swap_marks(records)
        if marks:
            report["swaps"] = marks
    return report


class _StartupInterrupt:
    """SIGINT handler for start-up: raises KeyboardInterrupt and remembers it, because Python drops an
    exception raised inside a finaliser or an at-fork callback (Ray forks while starting), and a Ctrl-C
    landing there would otherwise be lost and the run go on."""

    def __init__(self) -> None:
        self.hit = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def install(self) -> Any:
        try:
            return signal.signal(signal.SIGINT, self)
        except ValueError:  # not the main thread: signals go elsewhere
            return None


def check_distill(cfg: RunConfig, model: str | None) -> None:
    """Online distillation needs a cascade and a small model folder whose service this run starts
    (the swap is the service actor's method). Raises RunError (one line)."""
    if cfg.cascade is None:
        raise RunError("distillation learns from the big model: run a cascade (--cascade-model BIG)")
    if cfg.service.endpoint is not None or cfg.replicas > 1:
        raise RunError(
            "distillation swaps the small model's weights in the service this run starts: drop "
            "--endpoint (service.endpoint) and replicas"
        )
    if model is None:
        raise RunError("distillation fine-tunes the small model's folder: give --model PATH")


def start_distiller(
    settings: DistillSettings,
    cfg: RunConfig,
    model: str | None,
    folder: str,
    loop_actor: Any,
    service_actor: Any,
    stream: TextIO,
) -> Distiller:
    """The run's background trainer (``training.Distiller``) on the loop's records and the small
    service actor's ``swap``; its rounds go to ``folder/distill`` (or ``settings.work_dir``)."""
    import ray

    assert model is not None and service_actor is not None

    def snapshot(since: int) -> tuple[list[dict[str, Any]], int]:
        return ray.get(loop_actor.snapshot.remote(since), timeout=60)

    def swap(path: str) -> dict[str, Any]:
        return ray.get(service_actor.swap.remote(path), timeout=900)

    from tickcall.training import Distiller

    work = settings.work_dir or str(Path(folder) / "distill")
    _say(stream, f"distilling the big model's decisions into {Path(model).name} every {settings.every_s:g} s")
    return Distiller(
        settings,
        env_id=cfg.env,
        init_model=model,
        work_dir=work,
        snapshot=snapshot,
        swap=swap,
        log=lambda line: _say(stream, line),
    ).start()


def swap_report(records: list[TickRecord], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``report.json`` ``swaps``: the tick where each new set of small weights first answered
    (``stats.swap_marks``), its name (``model``) and how long it took to warm (``warm_ms``: loading it
    and registering the tools on it while the old weights served; None when not known here)."""
    warm = {r.get("weights"): r.get("warm_ms") for r in rounds if r.get("ok")}
    return [{**m, "warm_ms": warm.get(m["model"])} for m in swap_marks(records)]


def run_job(
    cfg: RunConfig,
    *,
    stream: TextIO | None = None,
    status_every_s: float = 0.5,
    distill: DistillSettings | None = None,
) -> RunOutcome:
    """Run one configured job end to end (see module docstring). Raises RunError for setup problems.

    ``distill`` (a cascade run whose small service is started here): online distillation, a
    ``training.Distiller`` that fine-tunes the small model on the big model's newest decisions every
    ``distill.every_s`` s and hot-swaps the result into the small service (report ``swaps``, ``distill``)."""
    stream = stream or sys.stderr
    if distill is None and cfg.distill_every_s is not None:
        from tickcall.training import DistillSettings

        distill = DistillSettings(every_s=cfg.distill_every_s, steps=cfg.distill_steps)
    try:  # the checks take a second or more (imports, a crowd's world, an adapter's merge): Ctrl-C is one line
        import ray

        agents = crowd_size(cfg)  # a multi-agent env: its world is built and closed here, as its check
        if agents is None:
            check_spec(cfg.env)  # a wrong env id is one line now, not an actor's traceback later
        model = resolve_model(cfg)
        cascade = resolve_cascade(cfg)
        if distill is not None:
            check_distill(cfg, model)
    except KeyboardInterrupt:
        raise RunInterrupted("interrupted before the loop ran: no report written") from None
    folder = prepare_report_dir(cfg.report_dir or default_report_dir())
    cfg = replace(cfg, history=resolve_history(cfg, model))
    waits = [
        e for e in (cfg.service.endpoint, cfg.cascade.endpoint if cfg.cascade else None) if e is not None
    ]
    for waited in waits:  # before Ray starts: an absent service costs seconds, not minutes
        try:
            wait_for_service(waited, cfg.service.connect_timeout_s, stream)
        except (RunError, KeyboardInterrupt) as exc:
            with contextlib.suppress(OSError):  # no run, so no empty report folder left behind
                Path(folder).rmdir()
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterrupted(
                    "interrupted while waiting for the policy service: no report written"
                ) from None
            raise
    service_actor = None
    replica_set = None
    big_actor = None
    loop_actor = None
    distiller = None
    started_ray = False
    guard = _StartupInterrupt()
    previous = guard.install()
    try:
        started_ray = init_ray(cfg.ray_address, log_to_driver=True)
        guard.install()  # again: starting Ray may set its own handler
        endpoint = cfg.service.endpoint
        endpoints: list[str] = []  # a crowd's: one per replica
        curve: dict[str, Any] | None = None  # client keys of replicas that listen beyond loopback
        service_info: dict[str, Any] = {}
        serve_limits = crowd_serve_config(agents) if agents is not None else {}
        if endpoint is None:
            from tickcall.agent.actor import start_policy_service

            spec = cfg.engine_spec()
            if model is not None:
                spec["model"] = model
            if crowd_int8(spec, agents):
                spec["precision"] = "int8"
                _say(stream, f"a crowd of {agents}: int8 weights (its batches are prefill-bound; docs/multi-agent.md)")
            what = f"{cfg.backend}{', ' + str(model) if model else ''}"
            if cfg.replicas > 1:
                _say(stream, f"starting {cfg.replicas} policy service replicas ({what}) ...")
                replica_set = start_replica_set(cfg, spec, serve_limits)
                endpoints = list(replica_set.endpoints)
                endpoint = endpoints[0]
                curve = getattr(replica_set, "curve", None)
            else:
                _say(stream, f"starting the policy service ({what}) ...")
                try:
                    service_actor, endpoint = start_policy_service(
                        spec, cfg.service.bind, max_restarts=cfg.service.max_restarts, **serve_limits
                    )
                except Exception as exc:
                    raise RunError(f"the policy service did not start: {root_cause(exc)}") from exc
            service_info = {"endpoint": endpoint, "started_here": True}
        else:
            service_info = {"endpoint": endpoint, "started_here": False}
            if agents is not None and agents > DEFAULT_STREAMS:
                _say(
                    stream,
                    f"note: {agents} agents share one client of the running service at {endpoint}: its "
                    f"max_streams_per_client must be {agents} or more (tickcall serve's config), else "
                    "agent-ticks are refused (over_quota)",
                )
        endpoints = endpoints or [endpoint]
        if agents is not None:
            service_info.update({"endpoints": endpoints, "replicas": len(endpoints), **serve_limits})
        big_endpoint = None
        if cascade is not None:
            assert cfg.cascade is not None
            big_endpoint = cfg.cascade.endpoint
            if big_endpoint is None:
                from tickcall.agent.actor import start_policy_service

                _say(
                    stream,
                    f"starting the big model's policy service ({cfg.cascade.backend}"
                    f"{', ' + str(cascade['model']) if cascade['model'] else ''}) ...",
                )
                try:
                    big_actor, big_endpoint = start_policy_service(
                        cfg.cascade.engine_spec(cfg.device),
                        cfg.service.bind,
                        max_restarts=cfg.service.max_restarts,
                    )
                except Exception as exc:
                    raise RunError(
                        f"the big model's policy service did not start: {root_cause(exc)}"
                    ) from exc
            cascade["service"] = {"endpoint": big_endpoint, "started_here": big_actor is not None}

        from tickcall.control_loop.actor import LoopSetupError, start_loop_actor

        settings = LoopSettings.from_run_config(cfg)
        world = WorldSpec(env=cfg.env, env_kwargs=world_kwargs(cfg), seed=cfg.seed, max_episodes=cfg.episodes)
        ends = ([f"{cfg.duration_s:g} s"] if cfg.duration_s else []) + (
            [f"{cfg.episodes} episodes"] if cfg.episodes else []
        )
        crowd_note = f" with {agents} agents" if agents is not None else ""
        _say(
            stream,
            f"starting the control loop: {cfg.env}{crowd_note} at {cfg.rate_hz:g} Hz ({' / '.join(ends)}) ...",
        )
        if cfg.env.startswith("engine:"):
            _say(
                stream,
                f"waiting for a game engine on {cfg.env[len('engine:') :]} (up to "
                f"{world.env_kwargs['wait_s']:g} s; --wait-s) ...",
            )
        try:
            if agents is not None:
                from tickcall.control_loop.crowd import start_crowd_loop_actor

                loop_actor = start_crowd_loop_actor(
                    settings,
                    crowd_factory(cfg),
                    endpoints,
                    client_timeout_ms=cfg.service.timeout_ms,
                    curve=curve,
                )
            elif cascade is not None:
                from tickcall.control_loop.cascade import CascadeSettings, start_cascade_loop_actor

                assert cfg.cascade is not None and big_endpoint is not None
                cs = CascadeSettings(
                    big_rate_hz=cfg.cascade.big_rate_hz,
                    threshold=cascade["threshold"],
                    max_age_ms=cfg.cascade.max_age_ms,
                    intent=cfg.cascade.intent,
                )
                loop_actor = start_cascade_loop_actor(
                    settings,
                    world_factory(world),
                    endpoint,
                    big_endpoint,
                    cs,
                    client_timeout_ms=cfg.service.timeout_ms,
                )
            else:
                loop_actor = start_loop_actor(
                    settings, world_factory(world), endpoint, client_timeout_ms=cfg.service.timeout_ms
                )
        except LoopSetupError as exc:  # already one line that says what to do
            raise RunError(f"the control loop did not start: {exc}") from None
        except Exception as exc:
            raise RunError(f"the control loop did not start: {root_cause(exc)}") from exc
        info = ray.get(loop_actor.info.remote())
        service_info.update(
            {
                "epoch": info.get("epoch"),
                "engine": info.get("engine"),
                "heads": info.get("heads"),
                "prefix_tokens": info.get("prefix_tokens"),
            }
        )
        if cascade is not None:
            cascade["service"].update(
                {k: (info.get("big") or {}).get(k) for k in ("epoch", "engine", "heads")}
            )

        if guard.hit:
            raise KeyboardInterrupt
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            previous = None
        ref = loop_actor.run.remote(duration_s=cfg.duration_s, episodes=cfg.episodes)
        if distill is not None:
            distiller = start_distiller(distill, cfg, model, folder, loop_actor, service_actor, stream)
        interrupted = False
        printer = ProgressPrinter(stream) if cfg.progress else None
        seen_warnings: set[str] = set()
        watch_world = cfg.env.startswith("engine:")  # its notices are printed even with --quiet
        journal = TickJournal(folder, cfg.rate_hz)
        loop_died: str | None = None
        try:
            try:
                result = _watch(
                    ref, loop_actor, journal, printer, seen_warnings, watch_world, stream, status_every_s
                )
            except KeyboardInterrupt:
                interrupted = True
                _say(stream, "\ninterrupted: stopping the loop (the report is still written) ...")
                ray.get(loop_actor.stop.remote())
                result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # kill -9, OOM: the ticks it had are the driver's copy
            cause = root_cause(exc).split(" Some common causes")[0]  # Ray's advice paragraph is not ours
            loop_died = f"the control loop actor died ({cause[:240]})"
            _say(stream, f"error: {loop_died}; writing the report of the ticks it ran")
            result = journal.result(loop_died)
        finally:
            journal.close()
            if distiller is not None:
                distiller.stop()
        if watch_world:  # what the engine did after the last poll
            with contextlib.suppress(Exception):
                for line in ray.get(loop_actor.status.remote(), timeout=10).get("notices", []):
                    (printer.message if printer is not None else lambda text: _say(stream, text))(line)
        if service_actor is not None:
            with contextlib.suppress(Exception):
                service_info["stats"] = ray.get(service_actor.stats.remote(), timeout=10)
        if replica_set is not None:
            service_info["replica_stats"] = replica_stats(replica_set)
        records = [TickRecord.from_dict(r) for r in result["records"]]
        engine = service_info.get("engine") or {}
        if big_actor is not None and cascade is not None:
            with contextlib.suppress(Exception):
                cascade["service"]["stats"] = ray.get(big_actor.stats.remote(), timeout=10)
        crowd = None
        if agents is not None:
            crowd = {
                "agents_requested": cfg.agents,
                "agents": len(result.get("agents") or []) or agents,
                "agent_ids": list(result.get("agents") or []),
                "replicas": len(endpoints),
                "endpoints": endpoints,
            }
            if result.get("router") is not None:
                crowd["router"] = result["router"]
        report = build_report(
            cfg,
            result,
            records,
            model=model or engine.get("model"),
            service=service_info,
            cascade=cascade,
            crowd=crowd,
            distill=None if distiller is None else {"settings": asdict(distill), "rounds": distiller.rounds},
        )
        if printer is not None:
            printer.close(
                {
                    "ticks": report.get("loop_ticks", report["ticks"]),
                    "ticks_planned": None,
                    "achieved_hz": report["achieved_hz"],
                    "outcomes": report["outcomes"],
                    "latency_p50_ms": report["latency_ms"]["p50"],
                    "latency_p99_ms": report["latency_ms"]["p99"],
                    "episodes_done": len(report["episodes"]),
                    "last_return": report["episodes"][-1]["return"] if report["episodes"] else None,
                }
            )
        if loop_died is not None:
            report["loop_died"] = loop_died
        paths = write_report(report, records, folder, plots=cfg.plots)
        if loop_died is not None:
            raise RunError(
                f"{loop_died}; the report of its {len(records)} {'agent-ticks' if agents else 'ticks'} is in "
                f"{folder} (marked loop_died)"
            )
        return RunOutcome(report=report, records=records, paths=paths, interrupted=interrupted)
    except KeyboardInterrupt:
        raise RunInterrupted("interrupted before the loop ran: no report written") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        _cleanup(loop_actor, service_actor, big_actor)
        if replica_set is not None:
            with contextlib.suppress(Exception):
                replica_set.stop()
        with contextlib.suppress(OSError):  # a run that never reported leaves no empty folder behind
            Path(folder).rmdir()
        if started_ray:
            ray.shutdown()


def world_kwargs(cfg: RunConfig) -> dict[str, Any] | None:
    """The env's keyword arguments; an ``engine:`` env also gets ``wait_s`` from ``engine_wait_s``."""
    kwargs = dict(cfg.env_kwargs or {})
    if cfg.env.startswith("engine:"):
        kwargs.setdefault("wait_s", cfg.engine_wait_s)
    return kwargs or None


def wait_for_service(endpoint: str, timeout_s: float, stream: TextIO) -> None:
    """Say what the run waits for, then wait up to ``timeout_s`` for ``endpoint`` to answer hello.

    Raises RunError (one line naming the endpoint, the wait and the fixes) when nothing answers or the
    service refuses the handshake. ZeroMQ connects lazily, so the only sign of an absent service is
    silence: this bounded wait is what turns it into a message.
    """
    from tickcall.agent.client import PolicyClient, PolicyError, PolicyTimeout

    _say(
        stream,
        f"waiting for the policy service at {endpoint} (up to {timeout_s:g} s; "
        "service.connect_timeout_s, --connect-timeout) ...",
    )
    client = PolicyClient(endpoint, timeout_ms=timeout_s * 1e3, name="tickcall-run-probe")
    try:
        client.hello()
    except PolicyTimeout:
        raise RunError(
            f"no policy service answered at {endpoint} within {timeout_s:g} s; start one there "
            f"(tickcall serve --bind {endpoint}), fix --endpoint, or raise --connect-timeout"
        ) from None
    except PolicyError as exc:
        raise RunError(f"the policy service at {endpoint} refused the handshake: {exc}") from None
    finally:
        client.close()


def _cleanup(loop_actor: Any, *services: Any) -> None:
    import ray

    if loop_actor is not None:
        with contextlib.suppress(Exception):
            ray.get(loop_actor.close.remote(), timeout=10)
        ray.kill(loop_actor)
    for service_actor in services:
        if service_actor is None:
            continue
        with contextlib.suppress(Exception):  # a big service killed mid-run is already gone
            ray.get(service_actor.stop.remote(), timeout=10)
        with contextlib.suppress(Exception):
            ray.kill(service_actor, no_restart=True)


JOURNAL_EVERY_S = 1.0  # how often the driver copies the loop's records (s)


class TickJournal:
    """The driver's copy of the loop's tick records, refreshed from ``LoopActor.snapshot`` about once a
    second, each record appended to ``ticks.jsonl`` (flushed) once it can no longer change; so a loop
    actor that dies (kill -9, out of memory) still leaves its ticks and a report. A run that ends
    normally rewrites ``ticks.jsonl`` whole from the loop's own records. Records are kept by tick and
    agent (a crowd run has one per agent per tick; ``agent`` is None otherwise)."""

    def __init__(self, folder: str | Path, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.records: dict[tuple[int, str], dict[str, Any]] = {}
        self.since = 0  # ticks below this are final
        self._written = 0
        self._fh = open(Path(folder) / "ticks.jsonl", "w")  # noqa: SIM115 - open for the whole run
        self._last = 0.0

    def update(self, actor: Any, now: float) -> None:
        """Copy what changed since the last copy (at most every JOURNAL_EVERY_S, ``now`` in s)."""
        import json

        import ray

        if now - self._last < JOURNAL_EVERY_S:
            return
        self._last = now
        try:
            recs, since = ray.get(actor.snapshot.remote(self.since), timeout=10)
        except ray.exceptions.GetTimeoutError:  # a busy actor: the next round copies it
            return
        for r in recs:
            self.records[(int(r["tick"]), r.get("agent") or "")] = r
        for key in sorted(k for k in self.records if self._written <= k[0] < since):
            self._fh.write(json.dumps(self.records[key]) + "\n")
        self._fh.flush()
        self._written = max(self._written, since)
        self.since = since

    def result(self, why: str) -> dict[str, Any]:
        """What ``build_report`` needs, from the copy (the loop's own result is lost with it)."""
        records = [self.records[k] for k in sorted(self.records)]
        for r in records:  # in flight when the loop died: accounted as errors, not dropped
            if r.get("outcome") is None:
                r["outcome"], r["reason"] = "error", "unresolved: the control loop died"
        last_ms = max((r.get("scheduled_ms") or 0.0 for r in records), default=0.0)
        return {
            "records": records,
            "elapsed_s": last_ms / 1e3 + 1.0 / self.rate_hz,
            "stopped": why,
            "warnings": [why],
        }

    def close(self) -> None:
        self._fh.close()


def _watch(
    ref: Any,
    loop_actor: Any,
    journal: TickJournal,
    printer: Any,
    seen_warnings: set[str],
    watch_world: bool,
    stream: TextIO,
    status_every_s: float,
) -> dict[str, Any]:
    """Wait for the loop's result: print its progress and notices, keep the journal; raises what
    ``ray.get`` raises (RayActorError when the loop actor died)."""
    import time

    import ray

    while True:
        ready, _ = ray.wait([ref], timeout=status_every_s)
        if ready:
            return ray.get(ref)
        journal.update(loop_actor, time.monotonic())
        if printer is None and not watch_world:
            continue
        status = ray.get(loop_actor.status.remote())
        for line in status.get("notices", []):  # an engine connected, was lost... (throttled)
            if printer is not None:
                printer.message(line)
            else:
                _say(stream, line)
        if printer is None:
            continue
        for w in status.get("warnings", []):
            if w not in seen_warnings:
                seen_warnings.add(w)
                printer.message(f"warning: {w}")
        printer.update(status)


def root_cause(exc: BaseException) -> str:
    """One line for an exception, also when Ray wraps it (an actor that died in ``__init__`` carries the
    whole remote traceback in its message; its last line is the error that killed it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if len(lines) > 1 and ":" in last:
        return last
    return f"{type(exc).__name__}: {last or repr(exc)}"


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human summary of a report (printed by ``tickcall run`` at the end)."""
    lat = report["latency_ms"]
    o = report["outcomes"]
    # a crowd's report counts agent-ticks in ``ticks``; its loop's own ticks are ``loop_ticks``
    ticks = report.get("loop_ticks", report["ticks"])
    decisions = (
        f"decisions {report['decisions_per_s']:.1f}/s over all agents"
        if "decisions_per_s" in report
        else f"decisions {report['decision_hz']:.2f} Hz"
    )
    lines = [
        f"ticks {ticks} at {report['rate_hz']:g} Hz (achieved {report['achieved_hz']:.2f} Hz, "
        f"{decisions}) over {report['elapsed_s']:.1f} s",
        "outcomes "
        + "  ".join(f"{k} {v}" for k, v in o.items())
        + f"   deadline misses {report['deadline_misses']} (longest streak {report['longest_miss_streak']})",
    ]
    crowd = report.get("crowd")
    if crowd is not None:
        n = report.get("agent_count") or crowd.get("agents")
        loop_ticks = report.get("loop_ticks")
        per = f" over {loop_ticks} ticks" if loop_ticks else ""
        p50, p90 = lat.get("p50"), lat.get("p90")
        overall = f"; all agent-ticks' latency p50 {p50:.2f}  p90 {p90:.2f} ms" if lat["n"] else ""
        replicas = crowd.get("replicas", 1)
        lines.append(
            f"agents {n}: {report['ticks']} agent-ticks{per}{overall}"
            + (f"; {replicas} replicas" if replicas > 1 else "")
        )
        worst = ((report.get("agent_spread") or {}).get("latency_p90_ms") or {}).get("worst")
        if worst is not None:
            spread = report["agent_spread"]
            misses = spread.get("deadline_misses") or {}
            lines.append(
                f"per agent  latency p90 worst {worst:.2f} ms ({spread['latency_p90_ms']['worst_agent']}), "
                f"best {spread['latency_p90_ms']['best']:.2f} ms; deadline misses "
                f"{misses.get('min')}-{misses.get('max')} per agent"
            )
    if report.get("observation_warning"):
        lines.append(f"warning: {report['observation_warning']}")
    if report.get("call_warning"):
        lines.append(f"warning: {report['call_warning']}")
    if lat["n"]:
        lines.append(
            f"tick latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
            f"max {lat['max']:.2f}"
        )
    rtt = (report.get("stages_ms") or {}).get("rtt") or {}
    if rtt.get("n") and (not lat["n"] or report.get("call_warning")):
        # tick latency covers ok ticks only; the round trip covers every reply, legal or not
        lines.append(
            f"round trip ms (all {rtt['n']} replies)  p50 {rtt['p50']:.2f}  p90 {rtt['p90']:.2f}  "
            f"p99 {rtt['p99']:.2f}  max {rtt['max']:.2f}"
        )
    late = report["lateness_ms"]
    if late["n"]:
        lines.append(
            f"start lateness ms  p50 {late['p50']:.3f}  p99 {late['p99']:.3f}  max {late['max']:.3f}"
            f"   drift {report['drift_ms']} ms"
        )
    cas = report.get("cascade")
    if cas:
        big = cas.get("big") or {}
        reasons = ", ".join(f"{k} {v}" for k, v in cas["reasons"].items())
        p50 = big.get("p50_ms")
        lines.append(
            f"cascade  small {100 * cas['small_share']:.0f}%  big {100 * cas['big_share']:.0f}%  "
            f"none {100 * cas['none_share']:.0f}%  (threshold {cas['threshold']:g}; {reasons})"
        )
        lines.append(
            f"big model  {big.get('decides', 0)} decisions at {big.get('rate_hz', 0):.2f} Hz, "
            f"{big.get('errors', 0)} errors" + (f", reply p50 {p50:.1f} ms" if p50 is not None else "")
        )
    eps = report["episodes"]
    if eps:
        rets = [e["return"] for e in eps]
        lines.append(
            f"episodes {len(eps)}  mean return {sum(rets) / len(rets):.2f}  "
            f"returns {', '.join(f'{r:.1f}' for r in rets[:10])}{' ...' if len(rets) > 10 else ''}"
        )
    return lines
