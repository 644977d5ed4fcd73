"""The cascade policy: a small model decides every tick, a big model decides at its own slower rate, and
each tick is routed by the small model's confidence (HyFunc's dual rate, ODIA's confidence routing).

``CascadePolicy`` implements the loop's ``control_loop.policy.Policy`` over two policies (in a run, two
``PolicyClient``\\ s, each to its own policy service with its own registration):

* **small**: every ``send_decide`` goes to it at once (the tick's critical path is the small model's);
* **big**: sent the same tick's turn at most ``big_rate_hz`` times a second and never with a request
  already in flight; its send is a non-blocking socket write after the small one's, so it never
  delays a tick. Its newest legal call is the *intent*, stamped with the time its request was sent
  (so a decision's age includes the big model's own latency: it decided on an observation that old).

Routing (``route``), when the small reply for tick k arrives (times in ms, confidence in [0, 1]):

=========================== ============ ==================================================
route_reason                decided_by   when
=========================== ============ ==================================================
confident                   small        ``confidence >= threshold``
no_confidence               small        the small engine reports no confidence (noop, random)
low_confidence_big          big          below threshold, the big decision is <= ``max_age_ms`` old
low_confidence_stale_big    small        below threshold, the big decision is older
big_missing                 small        below threshold, the big model has not decided yet (or never)
small_error_big             big          the small reply is an error/illegal call; a fresh big one exists
small_error                 small        ... and none does: the error stands (the loop's fallback acts)
small_no_decision           none         the small request expired or timed out (a deadline miss)
not_sent / no_small_reply   none         set by ``annotate`` for ticks the cascade never routed
=========================== ============ ==================================================

A routed-to-big tick hands the loop the small reply with the big call in it (same tick, the small
reply's own timings), so the loop's accounting is unchanged: exactly one reply per ``send_decide``.

``intent="turn"`` also renders the newest big call into the small model's turn as an environment line
``intent: move(direction="up")`` (``intent_line``). The default is ``none``: today's students were not
trained with such a line and a line they never saw changes what they decide.

``CascadeLoopActor`` is the loop actor that builds the cascade in its process (the big client registers
the world's tools with the big service) and writes each tick's routing into its records
(``TickRecord.decided_by`` and friends). ``calibrate`` turns a run's ``ticks.jsonl`` into a threshold
(``stats.reliability_curve``); docs/cascade.md has the design and the numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from tickcall.agent.messages import MAX_DEADLINE_MS, CallReply, DecideReply, ErrorReply
from tickcall.control_loop.actor import LoopActor, start_loop_actor
from tickcall.control_loop.policy import Policy
from tickcall.control_loop.replies import no_decision
from tickcall.control_loop.stats import choose_threshold, reliability_curve
from tickcall.models.calls import Call, render_call
from tickcall.models.format import Turn

from tickcall.timing import summary

__all__ = [
    "INTENTS",
    "REASONS",
    "BigDecision",
    "CascadePolicy",
    "CascadeSettings",
    "calibrate",
    "intent_line",
    "route",
    "start_cascade_loop_actor",
]

INTENTS = ("none", "turn")
REASONS = (
    "confident",
    "no_confidence",
    "low_confidence_big",
    "low_confidence_stale_big",
    "big_missing",
    "small_error_big",
    "small_error",
    "small_no_decision",
    "not_sent",
    "no_small_reply",
)
POLL_SLICE_MS = 5.0  # longest single wait on the sockets: the clients' own timeouts are handled between waits


@dataclass(frozen=True)
class CascadeSettings:
    """The cascade's knobs (plain data: sent to the loop actor). ``threshold`` is a number here (an
    ``auto`` threshold is resolved by ``calibrate`` before the run); above 1 every tick asks the big."""

    big_rate_hz: float = 4.0
    threshold: float = 0.9
    max_age_ms: float = 500.0
    intent: str = "none"

    def __post_init__(self) -> None:
        if not (self.big_rate_hz > 0 and math.isfinite(self.big_rate_hz)):
            raise ValueError(f"big_rate_hz must be a positive number of Hz, got {self.big_rate_hz!r}")
        if not (self.threshold >= 0 and math.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a number >= 0, got {self.threshold!r}")
        if not (self.max_age_ms > 0):
            raise ValueError(f"max_age_ms must be > 0 ms, got {self.max_age_ms!r}")
        if self.intent not in INTENTS:
            raise ValueError(f"intent must be one of {', '.join(INTENTS)}, got {self.intent!r}")


@dataclass(frozen=True)
class BigDecision:
    """The big model's newest legal decision: its reply, the tick whose turn it decided on, when that
    request was sent and when the reply was collected (monotonic s)."""

    reply: CallReply
    tick: int
    sent_at: float
    received_at: float

    def age_ms(self, now: float) -> float:
        """How old the decision is at ``now``: from its request's send (its observation), in ms."""
        return (now - self.sent_at) * 1e3


@dataclass
class Route:
    """One tick's routing, as ``TickRecord`` keeps it (see the module docstring for the reasons)."""

    decided_by: str
    route_reason: str
    confidence: float | None = None
    big_age_ms: float | None = None
    small_call: dict[str, Any] | None = None
    big_call: dict[str, Any] | None = (
        None  # the big model's call on this very tick's turn, when it was sent one
    )
    weights: str | None = None  # the small weights that answered (CallReply.weights): hot swaps show here

    def fields(self) -> dict[str, Any]:
        return {
            "decided_by": self.decided_by,
            "route_reason": self.route_reason,
            "confidence": self.confidence,
            "big_age_ms": None if self.big_age_ms is None else round(self.big_age_ms, 3),
            "small_call": self.small_call,
            "big_call": self.big_call,
            "weights": self.weights,
        }


def _call_of(reply: CallReply) -> dict[str, Any] | None:
    return None if reply.call is None else {"name": reply.call.name, "arguments": dict(reply.call.arguments)}


def intent_line(call: dict[str, Any] | None) -> str | None:
    """The environment line that carries the big model's intent: ``intent: move(direction="up")``
    (``models.calls.render_call``, the history items' call format); None without a call."""
    if call is None:
        return None
    return f"intent: {render_call(Call(name=call['name'], arguments=dict(call['arguments'])))}"


def route(
    small: DecideReply, big: BigDecision | None, now: float, s: CascadeSettings
) -> tuple[DecideReply, Route]:
    """The reply the loop gets for the small reply's tick, and why (``now``: monotonic s)."""
    age = None if big is None else big.age_ms(now)
    fresh = big is not None and age <= s.max_age_ms

    def take_big(
        reason: str, conf: float | None, small_call: dict[str, Any] | None
    ) -> tuple[DecideReply, Route]:
        assert big is not None
        b = big.reply
        if isinstance(small, CallReply):
            reply = msgspec.structs.replace(small, call=b.call, legal=b.legal, reason=b.reason, heads=b.heads)
        else:  # the small answered an error: the big reply itself, as the answer to this tick
            reply = msgspec.structs.replace(b, id=small.id, tick=small.tick, confidence=None)
        return reply, Route("big", reason, conf, age, small_call, None)

    if isinstance(small, ErrorReply):
        if no_decision(small):
            return small, Route("none", "small_no_decision", None, age)
        return (
            take_big("small_error_big", None, None)
            if fresh
            else (small, Route("small", "small_error", None, age))
        )
    small_call = _call_of(small)
    conf = small.confidence
    if not small.legal:
        if fresh:
            return take_big("small_error_big", conf, small_call)
        return small, Route("small", "small_error", conf, age, small_call)
    if conf is None:
        return small, Route("small", "no_confidence", None, age, small_call)
    if conf >= s.threshold:
        return small, Route("small", "confident", conf, age, small_call)
    if big is None:
        return small, Route("small", "big_missing", conf, None, small_call)
    if fresh:
        return take_big("low_confidence_big", conf, small_call)
    return small, Route("small", "low_confidence_stale_big", conf, age, small_call)


class CascadePolicy:
    """A ``Policy`` over a small and a big policy (see the module docstring). Not thread-safe except
    ``annotate``/``big_stats``, which a second thread may call while the loop runs."""

    def __init__(
        self,
        small: Policy,
        big: Policy,
        settings: CascadeSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.small = small
        self.big = big
        self.s = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._routes: dict[int, Route] = {}
        self._big_calls: dict[int, dict[str, Any]] = {}  # tick -> the big call on that tick's turn
        self._latest: BigDecision | None = None
        self._big_out: tuple[int, float] | None = None  # (tick, sent_at) of the big request in flight
        self._next_big_at: float | None = None
        self._big_first_sent: float | None = None
        self._big_rtts: list[float] = []
        self._big = {"sent": 0, "decides": 0, "errors": 0, "illegal": 0, "send_failures": 0}
        self._big_codes: dict[str, int] = {}

    # ------------------------------------------------------------------ the Policy protocol
    def send_decide(self, turn: Turn, tick_id: int, deadline_ms: float | None = None) -> int:
        """The small decide first (the tick's own), then the big one when it is due; returns the small
        request's id at once."""
        self._collect_big(0.0)
        small_turn = turn
        if self.s.intent == "turn" and self._latest is not None:
            line = intent_line(_call_of(self._latest.reply))
            if line is not None:
                small_turn = Turn(
                    query=turn.query,
                    history=list(turn.history),
                    environment=[*(turn.environment or []), line],
                )
        msg_id = self.small.send_decide(small_turn, tick_id, deadline_ms)
        self._maybe_send_big(turn, tick_id)
        return msg_id

    def poll(self, timeout_ms: float = 0) -> list[DecideReply]:
        """The small replies that are ready (waiting up to ``timeout_ms``), each routed; the big
        replies that came meanwhile are taken in first, so routing sees the freshest big decision."""
        end = self._clock() + max(0.0, timeout_ms) / 1e3
        while True:
            self._collect_big(0.0)
            replies = self.small.poll(0)
            left_ms = (end - self._clock()) * 1e3
            if replies or left_ms <= 0:
                break
            replies = self._wait(min(left_ms, POLL_SLICE_MS))
            if replies:
                break
        if not replies:
            return []
        self._collect_big(0.0)
        now = self._clock()
        out = []
        for reply in replies:
            routed, r = route(reply, self._latest, now, self.s)
            if isinstance(reply, CallReply):
                r.weights = reply.weights
            if reply.tick is not None:
                with self._lock:
                    r.big_call = self._big_calls.get(reply.tick)
                    self._routes[reply.tick] = r
            out.append(routed)
        return out

    # ------------------------------------------------------------------ the big model
    def _maybe_send_big(self, turn: Turn, tick_id: int) -> None:
        now = self._clock()
        if self._big_out is not None or (self._next_big_at is not None and now < self._next_big_at):
            return
        try:
            # its deadline: a decision older than max_age_ms is never used, so the service may drop it
            self.big.send_decide(turn, tick_id, min(self.s.max_age_ms, MAX_DEADLINE_MS))
        except Exception:  # a big model that cannot be asked leaves the loop on the small one
            self._big["send_failures"] += 1
            self._next_big_at = now + 1.0 / self.s.big_rate_hz
            return
        self._big["sent"] += 1
        self._big_out = (tick_id, now)
        if self._big_first_sent is None:
            self._big_first_sent = now
        # on schedule: keep the grid (tick-aligned sends do not drift the rate down); late (the previous
        # request was still in flight): a new grid from now, so the big model never gets a burst
        period = 1.0 / self.s.big_rate_hz
        nxt = None if self._next_big_at is None else self._next_big_at + period
        self._next_big_at = nxt if nxt is not None and nxt > now else now + period

    def _collect_big(self, timeout_ms: float) -> None:
        try:
            replies = self.big.poll(timeout_ms)
        except Exception:  # a broken big client must not break the tick
            self._big["errors"] += 1
            self._big_out = None
            return
        now = self._clock()
        for reply in replies:
            sent_at = (
                self._big_out[1] if self._big_out is not None and self._big_out[0] == reply.tick else None
            )
            if sent_at is not None:
                self._big_out = None
            if isinstance(reply, ErrorReply):
                self._big["errors"] += 1
                self._big_codes[reply.code] = self._big_codes.get(reply.code, 0) + 1
                continue
            if sent_at is None:  # a reply to a request already given up on: too old to use
                continue
            self._big_rtts.append((now - sent_at) * 1e3)
            if not reply.legal:
                self._big["illegal"] += 1
                continue
            self._big["decides"] += 1
            self._latest = BigDecision(reply, int(reply.tick), sent_at, now)
            call = _call_of(reply)
            if call is not None:
                with self._lock:
                    self._big_calls[int(reply.tick)] = call
                    if int(reply.tick) in self._routes:  # the small one was routed before the big answered
                        self._routes[int(reply.tick)].big_call = call

    def _wait(self, wait_ms: float) -> list[DecideReply]:
        """Wait up to ``wait_ms`` for either socket to be readable; policies without sockets (tests,
        in-process) are waited on through the small one's ``poll``."""
        small_sock, big_sock = getattr(self.small, "socket", None), getattr(self.big, "socket", None)
        if small_sock is None or big_sock is None:
            return self.small.poll(wait_ms)
        import zmq

        poller = zmq.Poller()
        poller.register(small_sock, zmq.POLLIN)
        poller.register(big_sock, zmq.POLLIN)
        poller.poll(max(1, math.ceil(wait_ms)))
        return []

    # ------------------------------------------------------------------ accounting
    def annotate(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write each tick's routing into its record dict (in place; returned): every tick gets a
        ``decided_by`` and a ``route_reason``, ``not_sent``/``no_small_reply`` where none was routed."""
        with self._lock:
            for r in records:
                route_ = self._routes.get(int(r["tick"]))
                if route_ is not None:
                    r.update(route_.fields())
                    continue
                r.update(
                    Route(
                        "none",
                        "no_small_reply" if r.get("sent") else "not_sent",
                        big_call=self._big_calls.get(int(r["tick"])),
                    ).fields()
                )
        return records

    def big_stats(self) -> dict[str, Any]:
        """The big model's figures for the report: reply times (ms, request sent -> reply collected),
        decides (legal replies), errors (error replies incl. timeouts; by code), rate_hz achieved."""
        now = self._clock()
        span = (now - self._big_first_sent) if self._big_first_sent is not None else 0.0
        lat = summary(self._big_rtts)
        return {
            "p50_ms": lat.get("p50"),
            "p90_ms": lat.get("p90"),
            **self._big,
            "error_codes": dict(self._big_codes),
            "rate_hz": round(self._big["sent"] / span, 4) if span > 0 else 0.0,
            "target_rate_hz": self.s.big_rate_hz,
        }

    # ------------------------------------------------------------------ what the loop actor reads
    @property
    def epoch(self) -> str | None:
        return getattr(self.small, "epoch", None)

    @property
    def stats(self) -> dict[str, Any]:
        return dict(getattr(self.small, "stats", {}))

    def close(self) -> None:
        for p in (self.small, self.big):
            with contextlib.suppress(Exception):
                p.close()


# --------------------------------------------------------------------------- calibration


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The tick dicts of a run folder's ``ticks.jsonl`` (or of that file named directly)."""
    p = Path(path)
    if p.is_dir():
        p = p / "ticks.jsonl"
    if not p.exists():
        raise ValueError(f"{p} does not exist: give a cascade run's report folder or its ticks.jsonl")
    out = []
    with p.open() as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(
                        f"{p}:{n}: not a JSON line; is this a tickcall run's ticks.jsonl?"
                    ) from None
    return out


def calibrate(path: str | Path, target: float = 0.95, bins: int = 10) -> tuple[float, dict[str, Any]]:
    """The threshold for ``target`` agreement from a cascade run's ticks (``stats.choose_threshold``)
    and the reliability curve it came from. Raises ValueError (one line) when the run has no tick where
    both models decided the same turn."""
    curve = reliability_curve(read_records(path), bins=bins)
    threshold = choose_threshold(curve, target)
    if threshold is None:
        raise ValueError(
            f"{path}: no tick where both models decided the same turn (a cascade run's ticks.jsonl "
            "with big_call and small_call); run a cascade with --threshold 0 first"
        )
    return threshold, {**curve, "target": target, "threshold": threshold, "source": str(path)}


# --------------------------------------------------------------------------- the loop actor


class CascadeLoopActor(LoopActor):
    """``LoopActor`` whose policy is a ``CascadePolicy``: ``endpoint`` is the small service's, ``big``
    says where the big one is (``{"endpoint", "settings": CascadeSettings fields}``). Records come back
    with their routing; ``run`` adds ``cascade`` (the big model's figures)."""

    def __init__(
        self,
        settings: dict[str, Any],
        make_world: Any,
        endpoint: str,
        client_timeout_ms: float = 5000.0,
        register_timeout_ms: float = 120000.0,
        curve: dict[str, Any] | None = None,
        big: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(settings, make_world, endpoint, client_timeout_ms, register_timeout_ms, curve)
        self.cascade: CascadePolicy | None = None
        self.big_info: dict[str, Any] = {}
        if self.setup_error is not None:
            return
        from tickcall.agent.client import PolicyClient

        big = dict(big or {})
        client = None
        try:
            cs = CascadeSettings(**big.get("settings", {}))
            client = PolicyClient(
                big["endpoint"], timeout_ms=client_timeout_ms, curve=curve, name="tickcall-loop-big"
            )
            welcome = client.hello(timeout_ms=register_timeout_ms)
            reg = client.register(self.world.tools, timeout_ms=register_timeout_ms)
        except Exception as exc:
            if client is not None:
                client.close()
            text = " ".join(str(exc).split()) or repr(exc)
            self.setup_error = (
                f"the big model's service at {big.get('endpoint')}: {type(exc).__name__}: {text}"
            )
            return
        self.big_info = {
            "endpoint": big["endpoint"],
            "epoch": client.epoch,
            "engine": dict(welcome.engine),
            "handle": reg.handle,
            "heads": list(reg.heads),
        }
        self.cascade = CascadePolicy(self.client, client, cs)
        self.client = self.cascade  # LoopActor.run hands self.client to the loop

    def info(self) -> dict[str, Any]:
        out = super().info()
        if "setup_error" not in out:
            out["big"] = dict(self.big_info)
        return out

    def run(
        self, max_ticks: int | None = None, duration_s: float | None = None, episodes: int | None = None
    ) -> dict[str, Any]:
        result = super().run(max_ticks=max_ticks, duration_s=duration_s, episodes=episodes)
        assert self.cascade is not None
        self.cascade.annotate(result["records"])
        result["cascade"] = {"big": self.cascade.big_stats(), "settings": dict(vars(self.cascade.s))}
        return result

    def snapshot(self, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        recs, settled = super().snapshot(since)
        if self.cascade is not None:
            self.cascade.annotate(recs)
        return recs, settled

    def big_stats(self) -> dict[str, Any]:
        return {} if self.cascade is None else self.cascade.big_stats()


def start_cascade_loop_actor(
    settings: Any,
    make_world: Any,
    endpoint: str,
    big_endpoint: str,
    cascade: CascadeSettings,
    *,
    client_timeout_ms: float = 5000.0,
    register_timeout_ms: float = 120000.0,
    curve: dict[str, Any] | None = None,
) -> Any:
    """``control_loop.actor.start_loop_actor`` for a ``CascadeLoopActor`` (same options, pinned to this
    node); raises ``LoopSetupError`` with one line when either registration fails."""
    from dataclasses import asdict

    big = {"endpoint": big_endpoint, "settings": asdict(cascade)}
    return start_loop_actor(
        settings,
        make_world,
        endpoint,
        client_timeout_ms=client_timeout_ms,
        register_timeout_ms=register_timeout_ms,
        curve=curve,
        actor_cls=CascadeLoopActor,
        extra_args=(big,),
    )
