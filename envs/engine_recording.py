"""Recorded play from a game engine over the bridge (protocol 1.2, ``obs.played``) as a dataset.

    from tickcall.envs.engine_recording import record_engine
    info = record_engine("engine:tcp://127.0.0.1:5560", episodes=50, out="runs/engine-ai.jsonl")

The engine's own AI (or a human player) is the teacher: an engine that sends, with an observation,
the call its AI took on it (``played``; the reference engine does with ``--ai chase``) gives one
labelled turn per such observation: the turn text as the bridge world renders it for the model (the
engine's ``text``, or its ``values`` rendered), no history lines, and the played call. The file is
the one dataset format (``models.training.dataset``: a header with the engine's tools from its hello)
and trains a student with ``tickcall train --data FILE``.

Episodes are counted from the engine's ``episode`` messages. The episode in progress when the
recording starts (or when an engine session starts) is left out: its start was not seen, so its
rows and return would be a fragment. Rows of an episode the engine never finished (it left or
restarted) are dropped too; ``episodes`` complete episodes are kept, each with its return.

The dataset's env id: the gymnasium id the engine declares in ``hello.game`` (the same game: same
tools and observation text, e.g. ``tickcall/Arena-v0``) when that env's tools equal the engine's, so
``tickcall train`` can also score the student on that env in lock-step; else ``engine/<name>`` (an
env only the dataset knows, scored on held-out rows).

Units: ``*_s`` seconds. Failures are one-line ``RecordingError`` messages (no engine within
``wait_s``, a refused hello, a crowd engine, no ``played`` on the engine's observations, the engine
gone for ``wait_s``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickcall.envs.engine_bridge import BridgeConfig, EngineBridge, Observation
from tickcall.envs.engine_bridge_messages import HelloMsg
from tickcall.envs.engine_bridge_state import EngineRefused
from tickcall.envs.engine_bridge_world import EngineWorldError, bridge_config
from tickcall.models.calls import Call
from tickcall.models.tools import normalize_tools
from tickcall.models.training.collect import Record
from tickcall.models.training.dataset import EnvInfo, make_header, write_dataset

KEEP_PLAYED = 200_000  # observations with played the bridge holds between two polls (ample at any rate)
POLL_S = 0.05  # how often the recorder takes what arrived (s)
# env_kwargs a recording takes: the bridge's settings and wait_s (lane_timeout_s has no hands here)
RECORD_KWARGS = ("wait_s", *BridgeConfig.__dataclass_fields__)


class RecordingError(RuntimeError):
    """A recording that cannot go on, as one line: what is wrong and how to fix it."""


@dataclass
class _Episode:
    """One engine episode being recorded: its rows so far (session, index) and whether it is kept."""

    rows: list[Record] = field(default_factory=list)
    partial: bool = False  # its start was not seen: left out


def engine_env_id(hello: HelloMsg, *, make_tools: Callable[[str], list[dict[str, Any]]] | None = None) -> str:
    """The dataset's env id for this engine: ``hello.game`` when that env's tools equal the engine's
    (``make_tools(game)`` reads them; default ``envs.binding.make_binding``), else ``engine/<name>``."""
    fallback = f"engine/{hello.engine}"
    if not hello.game:
        return fallback
    if make_tools is None:
        make_tools = _binding_tools
    try:
        theirs = normalize_tools(make_tools(hello.game))
    except Exception:  # not an env of this install: the engine's own name
        return fallback
    return hello.game if theirs == normalize_tools(hello.tools) else fallback


def _binding_tools(env_id: str) -> list[dict[str, Any]]:
    from tickcall.envs.binding import make_binding

    binding = make_binding(env_id)
    try:
        return list(binding.tools)
    finally:
        binding.env.close()


def record_engine(
    env: str,
    episodes: int,
    out: str | Path,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    env_id: str | None = None,
    played_wait_s: float = 5.0,
    log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Bind the bridge ``env`` names (``engine:tcp://HOST:PORT``), wait up to ``wait_s`` (env_kwargs,
    default 60 s) for an engine, record ``episodes`` complete episodes of its own play (observations
    with ``played``) and write them to ``out``. Returns what was recorded: rows, episodes, their
    returns (the engine's ``episode`` messages), mean return, env id, seconds.

    ``played_wait_s``: how long observations may arrive without any ``played`` before the recording
    stops (the engine is not playing itself). ``env_id`` overrides the dataset's env id. Raises
    ``RecordingError`` (one line) for every failure; the bridge is closed in every case."""
    if episodes < 1:
        raise RecordingError(f"episodes must be >= 1, not {episodes}")
    say = log or (lambda _line: None)
    kwargs = dict(env_kwargs or {})
    try:
        cfg, wait_s = bridge_config(env, kwargs, allowed=RECORD_KWARGS)
    except (EngineWorldError, ValueError) as exc:
        raise RecordingError(str(exc)) from None
    if cfg.keep_played == 0:
        cfg.keep_played = KEEP_PLAYED
    t0 = time.monotonic()
    try:
        bridge = EngineBridge(cfg).start()
    except Exception as exc:  # an exposed bind without CURVE, a port in use
        raise RecordingError(f"cannot bind the bridge on {cfg.endpoint}: {exc}") from None
    try:
        hello = _wait_engine(bridge, wait_s)
        dataset_env = env_id or engine_env_id(hello)
        say(f"recording {episodes} episodes of {hello.engine}'s own play on {cfg.endpoint} as {dataset_env}")
        kept, rows = _record(bridge, dataset_env, episodes, wait_s, played_wait_s, say)
    except BaseException:
        bridge.close()
        raise
    counts = dict(bridge.counts)
    bridge.close()
    physics_hz = None
    if dataset_env == hello.game:  # the same game as a gymnasium env: its physics rate (Hz)
        physics_hz = _physics_hz(dataset_env)
    returns = [ep["return"] for ep in kept]
    mean = sum(returns) / len(returns)
    meta = {
        "source": "engine",
        "endpoint": cfg.endpoint,
        "engine": hello.engine,
        "engine_version": hello.engine_version,
        "game": hello.game,
        "episodes": len(kept),
        "returns": returns,
        "lengths": [ep["length"] for ep in kept],
        "mean_return": mean,
        "obs_played": counts.get("obs_played", 0),
        "played_dropped": counts.get("played_dropped", 0),
    }
    header = make_header(
        {dataset_env: EnvInfo([dict(t) for t in hello.tools], physics_hz)}, f"engine:{hello.engine}", meta
    )
    n = write_dataset(out, header, rows)
    info = {
        "rows": n,
        "episodes": len(kept),
        "returns": returns,
        "mean_return": mean,
        "env_id": dataset_env,
        "engine": hello.engine,
        "record_s": time.monotonic() - t0,
        "out": str(out),
    }
    say(f"recorded {n} rows from {len(kept)} episodes of {hello.engine} (mean return {mean:.2f}) into {out}")
    return info


def _wait_engine(bridge: EngineBridge, wait_s: float) -> HelloMsg:
    try:
        hello = bridge.wait_for_engine(timeout_s=wait_s)
    except EngineRefused as exc:
        raise RecordingError(
            f"the engine on {bridge.endpoint} was refused ({exc}); fix its hello and restart it"
        ) from None
    except TimeoutError:
        raise RecordingError(
            f"no engine said hello on {bridge.endpoint} within {wait_s:g} s: start one "
            f"that plays itself (engines/build/tickcall-reference-engine --connect "
            f"{bridge.endpoint} --ai chase), or wait longer with --wait-s"
        ) from None
    if hello.crowd:
        raise RecordingError(
            f"the engine on {bridge.endpoint} runs a crowd (its hello has agents): "
            "recordings take one agent; start it without --agents"
        )
    return hello


def _record(
    bridge: EngineBridge,
    env_id: str,
    episodes: int,
    wait_s: float,
    played_wait_s: float,
    say: Callable[[str], Any],
) -> tuple[list[dict[str, Any]], list[Record]]:
    """Poll the bridge until ``episodes`` complete episodes with rows are kept; returns their
    ``episode`` messages and rows in order."""
    open_eps: dict[tuple[str, int], _Episode] = {}
    first_seen: set[str] = set()  # sessions whose first (partial) episode was marked
    kept: list[dict[str, Any]] = []
    rows: list[Record] = []
    ep_done = 0  # episode messages read so far (bridge.episodes grows)
    started = time.monotonic()
    last_obs = (0, started)  # (observations received, when that count last changed)
    last_played = (0, started)  # (observations with played received, when that count last changed)
    while len(kept) < episodes:
        time.sleep(POLL_S)
        now = time.monotonic()
        for obs in bridge.take_played():
            _add(open_eps, first_seen, env_id, obs, bridge)
        finished = bridge.episodes[ep_done:]
        ep_done += len(finished)
        for ep in finished:
            if ep.get("agent") is not None:
                continue
            cur = open_eps.pop((ep["session"], ep["index"]), None)
            if cur is None or cur.partial or not cur.rows:
                if cur is None and (ep["session"] not in first_seen):
                    first_seen.add(ep["session"])  # the episode before any played obs: a fragment
                continue
            kept.append(ep)
            rows.extend(_with_episode(cur.rows, len(kept) - 1))
            say(
                f"episode {len(kept)}/{episodes}: return {ep['return']:.2f}, {ep['length']} steps, "
                f"{len(cur.rows)} rows"
            )
            if len(kept) == episodes:
                break
        counts = bridge.counts
        received = counts.get("obs_received", 0)
        if received != last_obs[0]:
            last_obs = (received, now)
        elif now - last_obs[1] > wait_s:
            raise RecordingError(
                f"the engine on {bridge.endpoint} sent no observation for {wait_s:g} s "
                f"({len(kept)} of {episodes} episodes recorded): restart it, or wait longer "
                "with --wait-s"
            )
        played = counts.get("obs_played", 0)
        if played != last_played[0]:
            last_played = (played, now)
        elif now - last_played[1] > played_wait_s and now - last_obs[1] < played_wait_s:
            # observations keep coming, none with played: the engine is not playing itself
            bad = bridge.stats()["errors_by_code"].get("bad_played", 0)
            if bad:
                raise RecordingError(
                    f"the engine's obs.played were refused ({bad} bad_played errors; the "
                    "engine printed why): send {name, arguments} of a tool from its hello"
                )
            raise RecordingError(
                f"the engine on {bridge.endpoint} sent observations for {played_wait_s:g} s "
                "without `played` (its own play): start it with its AI (engines/build/"
                "tickcall-reference-engine --ai chase) or send obs.played (docs/protocol.md)"
            )
    return kept, rows


def _add(
    open_eps: dict[tuple[str, int], _Episode],
    first_seen: set[str],
    env_id: str,
    obs: Observation,
    bridge: EngineBridge,
) -> None:
    key = (obs.session, obs.episode)
    cur = open_eps.get(key)
    if cur is None:
        cur = open_eps[key] = _Episode(partial=obs.session not in first_seen)
        first_seen.add(obs.session)  # the first episode of a session seen mid-way: a fragment
    assert obs.played is not None
    cur.rows.append(
        Record(env_id, bridge.observation_text(obs), [], Call(obs.played.name, dict(obs.played.arguments)))
    )


def _with_episode(rows: list[Record], episode: int) -> list[Record]:
    """The rows tagged with their episode (the k-th kept one), where ``Record`` carries episodes: a
    held-out split of the dataset then keeps each episode on one side (``models.training.split``)."""
    if "episode" not in getattr(Record, "__dataclass_fields__", {}):
        return rows
    return [dataclasses.replace(r, episode=episode) for r in rows]


def _physics_hz(env_id: str) -> float | None:
    """The physics rate (Hz) of the gymnasium env the engine's game is, or None when it cannot be read."""
    try:
        from tickcall.envs.binding import make_binding

        binding = make_binding(env_id)
        try:
            return float(binding.physics_hz)
        finally:
            binding.env.close()
    except Exception:  # the rate is provenance only: a dataset without it still trains
        return None
