"""Mode 2 template: YOUR game keeps its own tick and asks the tickcall policy service for one call per tick.

    tickcall serve --config configs/serve.yaml            # the service (no-op engine) on tcp://127.0.0.1:5555
    python examples/mode2_client.py --endpoint tcp://127.0.0.1:5555 --seconds 10
    python examples/mode2_client.py --lockstep --frames 300   # deterministic: wait for each reply

Only pyzmq + msgpack: the same maps work from C++, C# or GDScript (docs/protocol.md, policy service).
The game below is tickcall/Arena-v0 standing in for your engine: replace ``Game`` with yours.
Real time: frames run on the game's clock; decisions are asked for at --rate Hz with a deadline and
applied when they come (only the newest); the frame loop never waits. Every decide gets exactly one
outcome: applied, illegal (never applied), error, stale (a newer tick was already answered) or lost.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import msgpack
import zmq


class Game:
    """YOUR ENGINE: tools (JSON schema), observation text, apply(call), step(). Here: the Arena env."""

    def __init__(self, seed: int = 0) -> None:
        from tickcall.envs.arena import ArenaEnv  # stand-in game; an engine has its own world instead

        self.env, self.frame_s = ArenaEnv(), 0.05  # 20 frames per second
        self.obs, _ = self.env.reset(seed=seed)
        self.tools = self.env.tickcall_tools()
        self.action, self.score = self.env.noop_action(), 0.0

    def observe(self) -> str:
        return self.env.obs_text(self.obs)

    def apply(self, call: dict) -> None:  # a legal call from the service
        from tickcall.models.calls import Call

        self.action, _ = self.env.action_from_call(Call(call["name"], call.get("arguments") or {}))

    def step(self) -> None:
        self.obs, reward, _, truncated, _ = self.env.step(self.action)
        self.score += reward
        if self.action["tool"] != 1:  # only `move` persists; aim/fire/dash/wait act once
            self.action = self.env.noop_action()
        if truncated:
            self.obs, _ = self.env.reset()


class Policy:
    """The service link: hello, register the tools once, decide per tick, re-register on a new epoch."""

    def __init__(self, endpoint: str, tools: list, timeout_ms: float = 5000) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.ids, self.tools, self.timeout_ms = itertools.count(1), tools, timeout_ms
        self.epoch = self.request({"type": "hello", "client": "mode2-example", "versions": [1]})["epoch"]
        self.register()

    def send(self, msg: dict) -> int:
        msg = {"v": 1, "id": next(self.ids), **msg}
        self.sock.send(msgpack.packb(msg, use_bin_type=True))
        return msg["id"]

    def recv(self, timeout_ms: float) -> dict | None:
        if not self.sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(self.sock.recv(), raw=False)

    def request(self, msg: dict) -> dict:  # blocking, setup only (hello, register)
        msg_id = self.send(msg)
        end = time.monotonic() + self.timeout_ms / 1e3
        while (left := end - time.monotonic()) > 0:
            reply = self.recv(left * 1e3)
            if reply and reply.get("id") == msg_id:
                if reply["type"] == "error":
                    raise RuntimeError(f"{reply['code']}: {reply['message']}")
                return reply
        raise TimeoutError(f"no reply to {msg['type']} within {self.timeout_ms} ms")

    def register(self) -> None:
        self.handle = self.request({"type": "register", "tools": self.tools})["handle"]

    def decide(self, tick: int, text: str, deadline_ms: float) -> int:
        return self.send(
            {
                "type": "decide",
                "handle": self.handle,
                "tick": tick,
                "turn": {"query": text},
                "sent_ms": time.monotonic() * 1e3,
                "deadline_ms": deadline_ms,
            }
        )


def run(
    endpoint: str,
    seconds: float = 10.0,
    rate_hz: float = 16.0,
    lockstep: bool = False,
    frames: int | None = None,
    seed: int = 0,
) -> dict:
    game = Game(seed)
    policy = Policy(endpoint, game.tools)
    counts = dict.fromkeys(("decides", "applied", "illegal", "error", "stale", "lost"), 0)
    newest_applied, pending = -1, {}  # message id -> tick
    frames = frames or int(seconds / game.frame_s)
    t0 = time.monotonic()
    next_decide = t0
    for frame in range(frames):
        if lockstep or time.monotonic() >= next_decide:  # ask for a decision (never wait for it)
            counts["decides"] += 1
            pending[policy.decide(frame, game.observe(), 1e3 / rate_hz)] = frame
            next_decide += 1.0 / rate_hz
        frame_end = time.monotonic() + (0 if lockstep else game.frame_s)
        while pending:  # replies that are here (lock-step: wait for this frame's)
            reply = policy.recv(
                policy.timeout_ms if lockstep else max(0.0, frame_end - time.monotonic()) * 1e3
            )
            if reply is None:
                break
            if reply.get("epoch") != policy.epoch:  # the service restarted: handles are gone
                policy.epoch = reply.get("epoch")
                policy.register()
            tick = pending.pop(reply.get("id"), None)
            if tick is None:
                continue
            if reply["type"] == "error":
                counts["error"] += 1
            elif not reply["legal"] or reply["call"] is None:
                counts["illegal"] += 1  # never applied
            elif tick < newest_applied:
                counts["stale"] += 1
            else:
                game.apply(reply["call"])
                newest_applied, counts["applied"] = tick, counts["applied"] + 1
            if lockstep:
                break
        if lockstep and pending:
            counts["lost"] += len(pending)
            pending.clear()
        game.step()
        if not lockstep:
            time.sleep(max(0.0, t0 + (frame + 1) * game.frame_s - time.monotonic()))
    end = time.monotonic() + 1.0  # replies still on their way: counted, not applied (the run is over)
    while pending and (reply := policy.recv(max(0.0, end - time.monotonic()) * 1e3)) is not None:
        if pending.pop(reply.get("id"), None) is not None:
            counts["error" if reply["type"] == "error" else "stale"] += 1
    counts["lost"] += len(pending)
    return {
        **counts,
        "frames": frames,
        "last_applied_frame": newest_applied,
        "score": round(game.score, 3),
        "elapsed_s": time.monotonic() - t0,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--rate", type=float, default=16.0)
    ap.add_argument("--lockstep", action="store_true", help="deterministic: wait for each frame's reply")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(run(a.endpoint, a.seconds, a.rate, a.lockstep, a.frames, a.seed)))
