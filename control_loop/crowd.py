"""One control loop for every agent of a crowd world (PettingZoo's Parallel API, an engine's NPCs).

``CrowdLoop`` keeps the single-agent loop's guarantees (``control_loop.loop``, whose rate keeping,
reply pumping, deadlines, drain and status it inherits; the bookkeeping is ``control_loop.tick_outcomes``)
for N agents at once. One tick ``k`` (scheduled at ``t0 + k*period``, ``tickcall.timing.RateKeeper``):

1. ``world.observe_all()``: the newest observation of every agent alive now (never waits for the env);
2. for each agent: if its previous request is unanswered, ``in_flight="skip"`` records the agent-tick as
   ``skipped`` (``in_flight``), ``"supersede"`` sends anyway (the older agent-tick turns ``late``);
   otherwise ``send_decide(Turn(obs.text, world.history(agent)), k, deadline_ms, stream=agent)``. All
   agents' decides leave within microseconds of each other, so the service decodes them as one batch;
   ``stream=agent`` is the service's latest-wins key and a replica router's sticky key;
3. between ticks, replies are matched to their agent-tick by the message id ``send_decide`` returned
   (every agent of a tick shares the tick id): a legal call before that agent-tick's deadline ->
   ``world.apply_call(agent, call)`` (``ok``); an error or an illegal call -> never applied, the agent's
   fallback acts (``error``); no reply by the deadline -> the agent's fallback (``fallback``), and a
   reply after it -> ``late``.

Every agent-tick gets exactly one ``TickRecord`` with ``agent`` set and one final outcome, so outcomes
sum to the agent-ticks: ``agents x ticks`` while the crowd is constant. Agents may come and go between
episodes: a tick has records for the agents ``observe_all`` returned; a period the rate keeper missed,
or a tick whose ``observe_all`` failed, has one record per agent of the last observation
(``skipped``/``missed_period``, ``error``). The loop stopping mid-flight drains replies as the single
loop does; nothing is left without an outcome.

``CrowdLoopActor`` is the Ray actor body (start it with ``control_loop.actor.start_loop_actor(...,
actor_cls=CrowdLoopActor)``): it builds the crowd world in its process and talks to one policy service
(``agent.client.PolicyClient``) or to several replicas (``agent.replicas.ReplicaPolicy``, agents sticky
to a replica, moved when one dies).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from tickcall.agent.messages import DecideReply
from tickcall.control_loop.actor import LoopActor, LoopSetupError, run_result, start_loop_actor
from tickcall.control_loop.config import LoopSettings
from tickcall.control_loop.loop import ControlLoop, LoopResult
from tickcall.control_loop.policy import Policy
from tickcall.control_loop.records import TickRecord
from tickcall.control_loop.stats import NO_OBSERVATION
from tickcall.control_loop.tick_outcomes import Pending
from tickcall.control_loop.world import CrowdWorld
from tickcall.models.calls import Call
from tickcall.models.format import Turn

from tickcall.timing import Slot

__all__ = ["CrowdLoop", "CrowdLoopActor", "LoopResult", "crowd_policy", "start_crowd_loop_actor"]


class CrowdLoop(ControlLoop):
    """Ticks every agent of ``world`` (a ``control_loop.world.CrowdWorld``) through ``policy`` (a
    ``Policy`` whose ``send_decide`` takes ``stream=``). ``run`` returns a ``LoopResult`` whose records
    (tick order, then agent) carry ``agent``. Runs in the calling thread; ``stop``/``status``/
    ``snapshot`` are thread-safe as in ``ControlLoop``."""

    def __init__(
        self,
        settings: LoopSettings,
        policy: Policy,
        world: CrowdWorld,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(settings, policy, world, None, clock=clock, sleep=sleep)
        self.world: CrowdWorld = world
        self._agents: list[str] = []  # the agents of the newest observation (or the world's before one)
        self._newest_of: dict[str, Any] = {}  # agent -> message id of its newest request
        self._ticks = 0  # ticks started or missed (records are agent-ticks)
        self._agent_ids: set[str] = set()  # every agent that had a record

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """``ControlLoop.status`` with ``ticks`` counting ticks (not agent-ticks), plus ``agents`` (alive
        in the newest observation), ``agent_ticks`` (records) and the outcome counts over agent-ticks."""
        out = super().status()
        out["agent_ticks"] = out["ticks"]
        out["ticks"] = self._ticks
        elapsed = out["elapsed_s"]
        out["achieved_hz"] = ((self._ticks - self._missed) / elapsed) if elapsed > 0 else 0.0
        out["agents"] = len(self._agents)
        return out

    @property
    def agents_seen(self) -> list[str]:
        """Every agent that has had a record in this run, sorted."""
        return sorted(self._agent_ids)

    # ------------------------------------------------------------------ hooks of ControlLoop
    @staticmethod
    def _order(rec: TickRecord) -> Any:
        return (rec.tick, rec.agent or "")

    @staticmethod
    def _key(reply: DecideReply) -> Any:
        return reply.id  # all agents of a tick share its tick id; the message id is one request's

    def _known_agents(self) -> list[str]:
        if self._agents:
            return list(self._agents)
        with contextlib.suppress(Exception):  # before the first observation: the world's own list
            return list(self.world.agents)
        return []

    def _listed_without(self, observations: dict[str, Any]) -> list[str]:
        """Agents present in the world with no fresh observation this tick, from the world's optional
        ``unobserved(observations)`` hook (an engine that skipped its frame for some of its NPCs).
        A PettingZoo world has none: an agent missing from ``observe_all`` there is done, not missed."""
        hook = getattr(self.world, "unobserved", None)
        if hook is None:
            return []
        try:
            return [a for a in hook(observations) if a not in observations]
        except Exception:  # advisory: the observations are what the tick acts on
            return []

    def _missed_period(self, tick: int, scheduled_ms: float) -> None:
        self._ticks += 1
        for agent in self._known_agents():
            self._add(
                TickRecord(
                    tick=tick,
                    scheduled_ms=scheduled_ms,
                    outcome="skipped",
                    reason="missed_period",
                    agent=agent,
                )
            )
            self._agent_ids.add(agent)

    def _apply(self, call: Call, p: Pending) -> None:
        self.world.apply_call(p.agent, call)

    def _fallback(self, rec: TickRecord) -> None:
        try:
            rec.fallback = self.world.fallback(rec.agent, self.s.fallback)
        except Exception as exc:
            rec.fallback = f"failed: {type(exc).__name__}: {exc}"

    def _on_deadline(self, p: Pending) -> None:
        if self._newest_of.get(p.agent) == p.msg_id:  # an older request's agent-tick already had its turn
            self._fallback(p.record)

    # ------------------------------------------------------------------ one tick
    def _tick(self, slot: Slot) -> None:
        self._ticks += 1
        self._collect(0.0)
        self._expire(self._clock())
        scheduled_ms = self._rel_ms(slot.scheduled)
        if slot.lateness_ms > 0.5e3 * self.s.period_s:
            self._behind(f"tick {slot.index} started {slot.lateness_ms:.1f} ms late")
        try:
            observations = dict(self.world.observe_all())
        except Exception as exc:
            why = f"observation failed: {type(exc).__name__}: {exc}"
            for agent in self._known_agents():
                rec = TickRecord(
                    tick=slot.index, scheduled_ms=scheduled_ms, lateness_ms=slot.lateness_ms, agent=agent
                )
                self._add(rec)
                self._agent_ids.add(agent)
                self._resolve(rec, "error", why)
                self._fallback(rec)
            return
        observed_all = getattr(self.world, "observed_all", None)
        if observed_all is not None:  # optional hook: a world that tags its calls with the loop's tick (bridge)
            observed_all(slot.index, observations)
        # an agent the world lists with no fresh observation this tick (an engine that skipped its
        # frame for it) still gets its agent-tick: an error with the single-agent loop's reason
        for agent in self._listed_without(observations):
            rec = TickRecord(tick=slot.index, scheduled_ms=scheduled_ms, lateness_ms=slot.lateness_ms, agent=agent)
            self._add(rec)
            self._agent_ids.add(agent)
            self._resolve(rec, "error", f"{NO_OBSERVATION}: no fresh observation for {agent}")
            self._fallback(rec)
        self._agents = list(observations)
        now = self._clock()
        deadline_at = slot.scheduled + self.s.deadline_s
        for agent, obs in observations.items():
            self._agent_ids.add(agent)
            rec = TickRecord(
                tick=slot.index,
                scheduled_ms=scheduled_ms,
                lateness_ms=slot.lateness_ms,
                obs_age_ms=max(0.0, (now - obs.taken_at) * 1e3),
                episode=obs.episode,
                agent=agent,
            )
            self._add(rec)
            self._send(slot.index, agent, obs, rec, now, deadline_at)

    def _send(
        self, tick: int, agent: str, obs: Any, rec: TickRecord, obs_at: float, deadline_at: float
    ) -> None:
        """One agent's decide for this tick (or its ``skipped``/``error`` record)."""
        newest = self._newest_of.get(agent)
        if newest is not None and newest in self._requests.pending:
            if self.s.in_flight == "skip":
                self._resolve(rec, "skipped", "in_flight")
                return
            self._requests.supersede(newest, self._book)  # its reply will not be applied
        history: list[str] = []
        if self.s.history_len > 0:
            try:
                history = list(self.world.history(agent))[-self.s.history_len :]
            except Exception:  # history is advisory; the agent-tick goes on without it
                history = []
        turn = Turn(query=obs.text, history=history)
        rec.turn = {"query": turn.query, "history": list(turn.history)}  # ticks.jsonl is training data too
        budget_ms = max(0.001, (deadline_at - self._clock()) * 1e3)
        try:
            msg_id = self.policy.send_decide(turn, tick, budget_ms, stream=agent)
        except Exception as exc:
            self._resolve(rec, "error", f"send failed: {type(exc).__name__}: {exc}")
            self._fallback(rec)
            return
        rec.sent = True
        self._requests.pending[msg_id] = Pending(
            tick=tick,
            msg_id=msg_id,
            sent_at=self._clock(),
            deadline_at=deadline_at,
            obs_at=obs_at,
            record=rec,
            agent=agent,
        )
        self._newest_of[agent] = msg_id


# --------------------------------------------------------------------------- the policy and the actor


def crowd_policy(
    endpoints: list[str], *, timeout_ms: float = 5000.0, curve: dict[str, Any] | None = None
) -> Any:
    """The crowd's policy: a ``PolicyClient`` for one endpoint, an ``agent.replicas.ReplicaPolicy`` (agents
    sticky to a replica, moved when one dies) for several. Raises ValueError (one line)."""
    if not endpoints:
        raise ValueError("the crowd loop needs at least one policy service endpoint")
    if len(endpoints) == 1:
        from tickcall.agent.client import PolicyClient

        return PolicyClient(endpoints[0], timeout_ms=timeout_ms, curve=curve, name="tickcall-crowd")
    try:
        from tickcall.agent.replicas import ReplicaPolicy
    except ImportError as exc:
        raise ValueError(
            f"{len(endpoints)} replicas need tickcall.agent.replicas, which this install lacks ({exc}); "
            "run with one replica (--replicas 1)"
        ) from None
    return ReplicaPolicy(list(endpoints), timeout_ms=timeout_ms, curve=curve, name="tickcall-crowd")


class CrowdLoopActor(LoopActor):
    """Ray actor body of a crowd run (start it with ``start_crowd_loop_actor``). Like ``LoopActor``
    (``status``/``snapshot``/``stop``/``close`` are its), but the world is a ``CrowdWorld`` and the
    policy talks to ``endpoints``: one service, or several replicas (``crowd_policy``)."""

    def __init__(
        self,
        settings: dict[str, Any],
        make_world: Callable[[], CrowdWorld],
        endpoints: list[str] | str,
        client_timeout_ms: float = 5000.0,
        register_timeout_ms: float = 120000.0,
        curve: dict[str, Any] | None = None,
    ) -> None:
        import sys

        # see LoopActor: a thread woken by its deadline waits for the GIL at most this long
        sys.setswitchinterval(0.001)
        self.settings = LoopSettings(**settings)
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.endpoint = self.endpoints[0] if self.endpoints else ""
        self.loop: CrowdLoop | None = None  # type: ignore[assignment]
        self._ran = False
        self.world: CrowdWorld | None = None  # type: ignore[assignment]
        self.client: Any = None
        self.welcome: Any = None
        self.registration: Any = None
        self.setup_error: str | None = None  # kept for info(), not raised (see LoopActor)
        try:
            self.world = make_world()
            self.client = crowd_policy(self.endpoints, timeout_ms=client_timeout_ms, curve=curve)
            self.welcome = self.client.hello(timeout_ms=register_timeout_ms)
            self.registration = self.client.register(self.world.tools, timeout_ms=register_timeout_ms)
        except Exception as exc:
            text = " ".join(str(exc).split()) or repr(exc)
            self.setup_error = text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"

    def info(self) -> dict[str, Any]:
        """``LoopActor.info`` plus ``endpoints`` and ``agents`` (the world's agents now)."""
        if self.setup_error is not None:
            return {"setup_error": self.setup_error}
        reg = self.registration
        engine = getattr(self.welcome, "engine", None)
        return {
            "endpoint": self.endpoint,
            "endpoints": list(self.endpoints),
            "epoch": getattr(self.client, "epoch", None),
            "engine": dict(engine) if engine else {},
            "handle": getattr(reg, "handle", None),
            "heads": list(getattr(reg, "heads", []) or []),
            "prefix_tokens": getattr(reg, "prefix_tokens", None),
            "world": self.world.describe(),
            "agents": list(self.world.agents),
            "pid": os.getpid(),
        }

    def run(
        self, max_ticks: int | None = None, duration_s: float | None = None, episodes: int | None = None
    ) -> dict[str, Any]:
        """Run the crowd loop once; returns what ``LoopActor.run`` returns (records carry ``agent``) plus
        ``agents`` (every agent that had a record) and ``router`` (the replica router's figures, when
        there are several replicas)."""
        if self._ran:
            raise RuntimeError("this loop actor already ran; start a new one")
        self._ran = True
        self.loop = CrowdLoop(self.settings, self.client, self.world)
        self.world.start()
        try:
            result = self.loop.run(max_ticks=max_ticks, duration_s=duration_s, episodes=episodes)
        finally:
            self.world.stop()
        out = run_result(result, self.world, self.world.describe(), self.settings,
                         agents=self.loop.agents_seen, client=_client_stats(self.client),
                         renewals=getattr(self.registration, "renewals", 0))
        if len(self.endpoints) > 1:  # the replica router's figures (its clients' are inside)
            out["router"] = out.pop("client")
            out["client"] = {}
            with contextlib.suppress(Exception):
                out["router"]["assignments"] = dict(self.client.assignments())
        return out


def _client_stats(client: Any) -> dict[str, Any]:
    """A policy's figures: ``PolicyClient.stats`` is a dict, ``ReplicaPolicy.stats()`` a method."""
    stats = getattr(client, "stats", None)
    try:
        stats = stats() if callable(stats) else stats
    except Exception as exc:  # figures are advisory; the run's records are what counts
        return {"error": f"{type(exc).__name__}: {exc}"}
    return dict(stats or {})


def start_crowd_loop_actor(
    settings: LoopSettings,
    make_world: Callable[[], CrowdWorld],
    endpoints: list[str],
    *,
    client_timeout_ms: float = 5000.0,
    register_timeout_ms: float = 120000.0,
    curve: dict[str, Any] | None = None,
    same_node: bool = True,
) -> Any:
    """``control_loop.actor.start_loop_actor`` for a ``CrowdLoopActor`` over ``endpoints`` (one service or
    several replicas); raises ``LoopSetupError`` with one line when the world or the registration fails."""
    if not endpoints:
        raise LoopSetupError("the crowd loop needs at least one policy service endpoint")
    return start_loop_actor(
        settings,
        make_world,
        list(endpoints),
        client_timeout_ms=client_timeout_ms,
        register_timeout_ms=register_timeout_ms,
        curve=curve,
        same_node=same_node,
        actor_cls=CrowdLoopActor,
    )
