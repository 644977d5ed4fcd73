"""Fair scheduling in the policy service (issue 19: one client cannot starve the others).

Real ``PolicyServer`` and real ZMQ clients on loopback. The scheduling tests use a scripted engine: the
no-op engine of ``models.stand_ins`` (it counts whitespace words as tokens and decodes nothing) that
logs every engine step and can hold one, so that the queue the scheduler sees is known exactly; a fake
only for what cannot be arranged otherwise (a model whose steps stop on demand). The chunked-prefill
tests run the real transformers engine on the tiny model and on the shipped arena student, token for
token. No timing thresholds: the tests assert order and accounting.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from helpers import CART_TOOLS
from tickcall.agent.client import PolicyClient
from tickcall.agent.config import ServeConfig
from tickcall.agent.messages import CallReply
from tickcall.agent.server import PolicyServer
from tickcall.models.format import Turn
from tickcall.models.stand_ins import NoOpEngine

ARENA = "models/shipped/tickcall-arena"


@dataclass
class _Part:
    """The scripted engine's stand-in for prefilled K/V: how many suffix tokens, on which engine."""

    tokens: int
    engine: str


class Scripted(NoOpEngine):
    """The no-op engine, logging each engine step: ``("batch", [queries], [part tokens or None])`` and
    ``("chunk", query, tokens done before)``. A decide whose query is ``"block"`` holds its step until
    ``release`` is set (``held`` tells the test it is held)."""

    def __init__(self, name: str = "A") -> None:
        super().__init__()
        self.name = name
        self.log: list[tuple] = []
        self.held, self.release = threading.Event(), threading.Event()

    def decide_batch(self, requests, parts=None):
        self.log.append(
            (
                "batch",
                [t.query for _, t in requests],
                None if parts is None else [None if p is None else (p.tokens, p.engine) for p in parts],
            )
        )
        if any(t.query == "block" for _, t in requests):
            self.held.set()
            assert self.release.wait(30)
        return super().decide_batch(requests)


class Chunking(Scripted):
    """A scripted engine that can prefill in chunks (``prefill_chunk``); its ``hold_chunk``-th chunk
    call holds its step like ``"block"`` does."""

    def __init__(self, name: str = "A", hold_chunk: int = 0) -> None:
        super().__init__(name)
        self.hold_chunk = hold_chunk
        self.chunks = 0

    def prefill_chunk(self, handle, turn, part, chunk):
        n = self.suffix_tokens(handle, turn)
        done = 0 if part is None else part.tokens
        assert part is None or part.engine == self.name, "a part made on another engine"
        self.chunks += 1
        self.log.append(("chunk", turn.query, done))
        if self.chunks == self.hold_chunk:
            self.held.set()
            assert self.release.wait(30)
        end = min(done + chunk, n - 1)
        return _Part(end, self.name), n - end


def _serve(engine, peer: bool = True, **settings):
    """A started service on ``engine``. ``peer``: the scheduler counts another client as active at all
    times (a stand-in that never sends), so a long turn is chunked even when the test drives one
    client; ``peer=False`` leaves the service as it is."""
    config = ServeConfig(bind="tcp://127.0.0.1:0", gather_ms=0, **settings)
    server = PolicyServer(engine, config)
    if peer:
        server._seen[b"peer"] = float("inf")  # last seen "in the future": never leaves the window
    return server, server.start()


def _wait(predicate, what: str, timeout_s: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s * 200)):
        if predicate():
            return
        done.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def _queued(server, n: int) -> None:
    _wait(lambda: server.stats()["queued"] == n, f"{n} queued decides")


def _replies(client, n: int) -> list:
    got: list = []
    for _ in range(200):
        got += client.poll(100)
        if len(got) >= n:
            break
    assert len(got) == n, got
    return got


def _batches(engine, after: str = "block") -> list[list[str]]:
    """The queries of each batch the engine decoded after the one holding ``after``."""
    seen, out = False, []
    for entry in engine.log:
        if entry[0] == "batch":
            if seen:
                out.append(entry[1])
            seen = seen or after in entry[1]
    return out


def test_round_robin_one_decide_per_client_per_round_nearest_deadline_first():
    """Oldest-first would batch a1 a2 | a3 b | c. The scheduler takes one decide per client per round:
    b first (the only deadline), then a (arrived before c); next step c (never served) before a2."""
    engine = Scripted()
    server, endpoint = _serve(engine, max_batch=2, prefill_chunk_tokens=0)
    z, a, b, c = (PolicyClient(endpoint, timeout_ms=20_000, name=n) for n in "zabc")
    try:
        for cl in (z, a, b, c):
            cl.register(CART_TOOLS)
        z.send_decide("block", 0)
        assert engine.held.wait(10)
        for k in (1, 2, 3):
            a.send_decide(f"a{k}", k, stream=f"s{k}")
        _queued(server, 3)
        b.send_decide("b1", 1, deadline_ms=20_000)
        _queued(server, 4)
        c.send_decide("c1", 1)
        _queued(server, 5)
        engine.release.set()
        got = _replies(a, 3) + _replies(b, 1) + _replies(c, 1) + _replies(z, 1)
    finally:
        for cl in (z, a, b, c):
            cl.close()
        server.stop()
    assert all(isinstance(r, CallReply) for r in got)
    assert _batches(engine) == [["b1", "a1"], ["c1", "a2"], ["a3"]]


def test_step_token_budget_keeps_a_long_turn_out_of_the_short_batch():
    """With chunking off, a long turn that would take the step over ``step_tokens`` waits for the next
    step, where it is decoded alone (the first decide of a step always fits); short ones go together."""
    engine = Scripted()
    handle = engine.register(CART_TOOLS).handle
    short = engine.suffix_tokens(handle, Turn(query="s1"))
    server, endpoint = _serve(engine, max_batch=8, prefill_chunk_tokens=0, step_tokens=2 * short)
    z, a, b, c = (PolicyClient(endpoint, timeout_ms=20_000, name=n) for n in "zabc")
    long_query = " ".join(["w"] * 50)
    try:
        for cl in (z, a, b, c):
            cl.register(CART_TOOLS)
        z.send_decide("block", 0)
        assert engine.held.wait(10)
        a.send_decide("s1", 1)
        _queued(server, 1)
        b.send_decide(long_query, 1)
        _queued(server, 2)
        c.send_decide("s2", 1)
        _queued(server, 3)
        engine.release.set()
        got = _replies(a, 1) + _replies(b, 1) + _replies(c, 1) + _replies(z, 1)
    finally:
        for cl in (z, a, b, c):
            cl.close()
        server.stop()
    assert all(isinstance(r, CallReply) for r in got)
    assert _batches(engine) == [["s1", "s2"], [long_query]]


def test_a_victims_decide_never_waits_for_a_whole_long_prefill():
    """A long turn is prefilled a chunk per engine step; a short decide that arrives meanwhile is
    decoded at the next step, before any further chunk, and every short decide waited for at most one
    chunk of another turn (``chunk_waits``). The long turn is decoded with its prefilled part, which
    covers all its tokens but the last, in exactly ceil((n - 1) / chunk) chunks."""
    engine = Chunking(hold_chunk=1)
    handle = engine.register(CART_TOOLS).handle
    chunk = 4
    server, endpoint = _serve(engine, prefill_chunk_tokens=chunk)
    attacker = PolicyClient(endpoint, timeout_ms=20_000, name="attacker")
    victim = PolicyClient(endpoint, timeout_ms=20_000, name="victim")
    long_query = " ".join(["w"] * 60)
    n = engine.suffix_tokens(handle, Turn(query=long_query))
    try:
        attacker.register(CART_TOOLS)
        victim.register(CART_TOOLS)
        attacker.send_decide(long_query, 1)
        assert engine.held.wait(10)  # the first chunk is running
        victim.send_decide("v0", 0, deadline_ms=20_000)
        _queued(server, 2)
        engine.release.set()
        k, done = 0, []
        while not done:  # the victim decides in a closed loop until the long turn is answered
            r = victim.decide(f"v{k + 1}", k + 1, deadline_ms=20_000) if k else _replies(victim, 1)[0]
            assert isinstance(r, CallReply)
            k += 1
            done = attacker.poll(0)
        stats = server.stats()
    finally:
        attacker.close()
        victim.close()
        server.stop()
    assert isinstance(done[0], CallReply)
    assert engine.log[0] == ("chunk", long_query, 0)
    assert engine.log[1][:2] == ("batch", ["v0"])  # before the second chunk
    chunks = [e for e in engine.log if e[0] == "chunk"]
    assert [e[2] for e in chunks] == list(range(0, n - 1, chunk))
    assert stats["prefill_chunks"] == len(chunks) == -(-(n - 1) // chunk)
    final = [e for e in engine.log if e[0] == "batch" and long_query in e[1]]
    assert len(final) == 1
    assert final[0][2][final[0][1].index(long_query)] == (n - 1, "A")
    assert max(stats["chunk_waits"]) <= 1 and sum(stats["chunk_waits"].values()) == k


def test_every_waiting_long_turn_gets_its_chunk_in_the_same_step():
    """Three long turns queued behind a held step (two of one client, one of another): each engine
    step prefills one chunk of every one of them, not of one turn at a time, so they advance together
    and are decoded together; the chunk steps are counted once each for the decides waiting on them."""
    engine = Chunking()
    chunk = 4
    server, endpoint = _serve(engine, prefill_chunk_tokens=chunk)
    a = PolicyClient(endpoint, timeout_ms=20_000, name="a")
    b = PolicyClient(endpoint, timeout_ms=20_000, name="b")
    queries = [" ".join([w] * 20) for w in ("x", "y", "z")]
    try:
        a.register(CART_TOOLS)
        b.register(CART_TOOLS)
        a.send_decide("block", 0, stream="hold")
        assert engine.held.wait(10)
        a.send_decide(queries[0], 1, stream="s1")
        a.send_decide(queries[1], 2, stream="s2")
        b.send_decide(queries[2], 3)
        _queued(server, 3)
        engine.release.set()
        got = _replies(a, 3) + _replies(b, 1)
    finally:
        a.close()
        b.close()
        server.stop()
    assert all(isinstance(r, CallReply) for r in got)
    steps = [e for e in engine.log if e[0] == "chunk"]
    n = engine.suffix_tokens(engine.register(CART_TOOLS).handle, Turn(query=queries[0]))
    rounds = -(-(n - 1) // chunk)
    assert len(steps) == 3 * rounds
    for k in range(rounds):  # step k: one chunk of each turn, at the same offset
        step = steps[3 * k : 3 * k + 3]
        assert sorted(e[1] for e in step) == sorted(queries) and {e[2] for e in step} == {k * chunk}
    (final,) = [e for e in engine.log if e[0] == "batch" and queries[0] in e[1]]
    assert sorted(final[1]) == sorted(queries)  # decoded in one batch


def test_a_turn_cheap_to_prefill_whole_is_not_chunked():
    """``prefill_chunk_ms``: a turn over the chunk size is chunked only when its prefill, at the
    service's measured cost per token, would hold the engine longer than that. The cost is set here
    (the scripted engine prefills nothing): cheap -> batched whole, dear -> chunked."""
    engine = Chunking()
    server, endpoint = _serve(engine, prefill_chunk_tokens=4, prefill_chunk_ms=5.0)
    client = PolicyClient(endpoint, timeout_ms=20_000)
    long_query = " ".join(["w"] * 40)
    try:
        client.register(CART_TOOLS)
        server._core.prefill_ms_per_token = 0.01  # 40 tokens: 0.4 ms
        assert isinstance(client.decide(long_query, 1), CallReply)
        assert not [e for e in engine.log if e[0] == "chunk"]
        server._core.prefill_ms_per_token = 1.0  # 40 ms
        assert isinstance(client.decide(long_query, 2), CallReply)
        assert [e for e in engine.log if e[0] == "chunk"]
    finally:
        client.close()
        server.stop()


def test_a_client_alone_gets_its_long_turn_whole_and_chunks_start_when_another_comes():
    """Chunks only let other clients' decides in between: with nobody else queuing, a long turn is
    prefilled whole (sooner, and no tick of a lone real-time client expires between chunks); once
    another client has had a decide queued (within ``PEER_WINDOW_S``), long turns are chunked."""
    engine = Chunking()
    server, endpoint = _serve(engine, peer=False, prefill_chunk_tokens=4, prefill_chunk_ms=0)
    a = PolicyClient(endpoint, timeout_ms=20_000, name="a")
    b = PolicyClient(endpoint, timeout_ms=20_000, name="b")
    long_query = " ".join(["w"] * 40)
    try:
        a.register(CART_TOOLS)
        b.register(CART_TOOLS)
        assert isinstance(a.decide(long_query, 1), CallReply)
        assert not [e for e in engine.log if e[0] == "chunk"]
        assert isinstance(b.decide("short", 1), CallReply)
        assert isinstance(a.decide(long_query, 2), CallReply)
        assert [e for e in engine.log if e[0] == "chunk"]
    finally:
        a.close()
        b.close()
        server.stop()


def test_the_prefill_cost_is_learnt_from_prefills_long_enough_to_tell():
    """Prefills under ``COST_MIN_TOKENS`` tokens (a chunked turn's last token, the heads' tags) are
    mostly fixed cost and do not count; longer ones set a moving average of ms per token."""
    from tickcall.agent.core import COST_MIN_TOKENS

    server, _ = _serve(Scripted())
    try:
        core = server._core
        assert core.prefill_cost_ms(100) is None
        core._note_prefill_ms(5.0, 2)
        assert core.prefill_ms_per_token is None
        core._note_prefill_ms(1.0, COST_MIN_TOKENS * 2)
        assert core.prefill_cost_ms(COST_MIN_TOKENS * 2) == pytest.approx(1.0)
        core._note_prefill_ms(3.0, COST_MIN_TOKENS * 2)
        assert 1.0 < core.prefill_cost_ms(COST_MIN_TOKENS * 2) < 3.0
    finally:
        server.stop()


def test_a_half_prefilled_turn_is_restarted_on_new_weights():
    """A hot swap between two chunks: the turn's part, made on the old engine, is never used on the new
    one; the turn is prefilled again there from its first token and answered once, by the new weights."""
    old, new = Chunking("A", hold_chunk=2), Chunking("B")
    server, endpoint = _serve(old, prefill_chunk_tokens=4)
    client = PolicyClient(endpoint, timeout_ms=20_000)
    long_query = " ".join(["w"] * 40)
    result: dict = {}
    try:
        client.register(CART_TOOLS)
        client.send_decide(long_query, 1)
        assert old.held.wait(10)  # inside the second chunk, on the old weights
        t = threading.Thread(target=lambda: result.update(r=server.swap_engine(new, "B")))
        t.start()
        _wait(lambda: server._commands, "the switch command")  # queued behind the running chunk
        old.release.set()
        t.join(30)
        (reply,) = _replies(client, 1)
    finally:
        client.close()
        server.stop()
    assert result["r"].ok
    assert isinstance(reply, CallReply) and reply.weights == "B"
    assert [e[0] for e in old.log] == ["chunk", "chunk"]  # never decoded on the old weights
    new_chunks = [e for e in new.log if e[0] == "chunk"]
    assert new_chunks[0][2] == 0  # restarted from the first token
    (final,) = [e for e in new.log if e[0] == "batch"]
    assert final[2][0][1] == "B"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("prefill_chunk_tokens", -1),
        ("prefill_chunk_tokens", "abc"),
        ("step_tokens", 0),
        ("step_tokens", 1.5),
        ("prefill_chunk_ms", -1),
        ("prefill_chunk_ms", "x"),
    ],
)
def test_bad_scheduling_settings_are_refused(setting, value):
    with pytest.raises(ValueError, match=setting):
        ServeConfig(**{setting: value})


# ---------------------------------------------------------------------------------- real models
def _engine(path: str):
    from tickcall.models.hf_engine import HFEngine

    return HFEngine(path)


def _arena_tools():
    from tickcall.world import WorldSpec, make_world

    world = make_world(WorldSpec(env="tickcall/Arena-v0", seed=0))
    try:
        return world.tools
    finally:
        world.close()


@pytest.fixture(scope="module")
def arena_tools():
    return _arena_tools()


def _turns() -> list[Turn]:
    from tickcall.bench.fairness import arena_turn, long_turn

    return [Turn(query=long_turn(w)) for w in (3, 40, 125)] + [Turn(query=arena_turn(k)) for k in range(2)]


@pytest.mark.parametrize("model", ["tiny", "arena"])
def test_chunked_prefill_gives_the_same_tokens(model, tiny_model_path, arena_tools):
    """Every head's greedy tokens, prefilled in chunks of 5 and 32 tokens and then decoded with the
    parts, equal those of the whole prefill (one batch of long and short turns)."""
    path = str(tiny_model_path) if model == "tiny" else ARENA
    engine = _engine(path)
    try:
        handle = engine.register(arena_tools).handle
        turns = _turns()
        whole = engine.decide_batch([(handle, t) for t in turns])
        for chunk in (5, 32):
            parts = []
            for t in turns:
                part, left = None, 2
                while left > 1:
                    part, left = engine.prefill_chunk(handle, t, part, chunk)
                parts.append(part)
            n = [engine.suffix_tokens(handle, t) for t in turns]
            assert [0 if p is None else p.tokens for p in parts] == [x - 1 for x in n]
            got = engine.decide_batch([(handle, t) for t in turns], parts=parts)
            assert [d.head_token_ids for d in got] == [d.head_token_ids for d in whole], chunk
            assert [d.prompt_tokens for d in got] == [1] * len(turns)
            # all turns' chunks at once (one forward per step): the same parts, the same tokens
            together, left = [None] * len(turns), [2] * len(turns)
            while max(left) > 1:
                out = engine.prefill_chunks(
                    [(handle, t, p) for t, p in zip(turns, together, strict=True)], chunk
                )
                together, left = [p for p, _ in out], [x for _, x in out]
            assert [0 if p is None else p.tokens for p in together] == [x - 1 for x in n]
            got = engine.decide_batch([(handle, t) for t in turns], parts=together)
            assert [d.head_token_ids for d in got] == [d.head_token_ids for d in whole], ("together", chunk)
    finally:
        engine.close()


def test_the_service_answers_the_same_with_and_without_chunks(arena_tools):
    """Through the service (real sockets, the shipped arena student): long and short turns answered with
    chunked prefill (4 tokens a chunk) carry the same heads and calls as with whole turns."""
    engine = _engine(ARENA)
    answers = {}
    try:
        for chunk in (0, 4):
            server, endpoint = _serve(engine, prefill_chunk_tokens=chunk)
            client = PolicyClient(endpoint, timeout_ms=60_000)
            try:
                client.register(arena_tools)
                for k, t in enumerate(_turns()):
                    client.send_decide(t, k, stream=f"s{k}")
                got = sorted(_replies(client, len(_turns())), key=lambda r: r.tick)
                answers[chunk] = [(r.heads, r.call) for r in got]
                chunked = server.stats().get("chunked_decides", 0)
            finally:
                client.close()
                server.stop()
            assert chunked > 0 if chunk else chunked == 0
    finally:
        engine.close()
    assert answers[4] == answers[0]


def test_a_turn_mostly_in_the_turn_cache_is_not_chunked(tiny_model_path, arena_tools):
    """The scheduler sizes a turn by what the engine would prefill now: the suffix less what the
    turn-prefix cache reuses (``HFEngine.uncached_tokens``). A long turn is chunked the first time; the
    next tick's turn, the same long goal with another state line, reuses all but its last tokens and
    is batched whole (on the goal arena, chunking every tick's turn cost SmolLM2 three forwards a tick)."""
    from tickcall.models.hf_engine import HFEngine

    engine = HFEngine(str(tiny_model_path), turn_cache=8)
    goal = "Shoot only the blue targets, keep out of the north, and never dash. " * 2
    chunk = 8
    try:
        server, endpoint = _serve(engine, prefill_chunk_tokens=chunk, prefill_chunk_ms=0)
        client = PolicyClient(endpoint, timeout_ms=60_000)
        try:
            handle = client.register(arena_tools).handle
            n = engine.suffix_tokens(server._core._regs[handle].engine_handle, Turn(query=goal + "at=C"))
            assert n > 2 * chunk
            assert isinstance(client.decide(goal + "at=C", 1), CallReply)
            first = server.stats().get("chunked_decides", 0)
            assert isinstance(client.decide(goal + "at=N", 2), CallReply)
            second = server.stats().get("chunked_decides", 0) - first
            assert isinstance(client.decide("a different long turn, nothing of it cached " * 2, 3), CallReply)
            third = server.stats().get("chunked_decides", 0) - first - second
        finally:
            client.close()
            server.stop()
    finally:
        engine.close()
    assert (first, second, third) == (1, 0, 1)
