"""The parent side of an actuator child process (see ``procworker``): start, request, kill."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

from tickcall.control_loop.futures.wire import FrameError, read_frame, write_frame
from tickcall.models.calls import Call


class ChildDied(RuntimeError):  # noqa: N818 - an event, not a programming error
    """The child process ended (crash, kill) or its pipe broke."""


class ChildStartError(RuntimeError):
    """The child could not load its actuator (bad import path, factory raised)."""


class ChildActuator:
    """One actuator process. Not thread-safe: one owner thread calls ``request``; any thread may ``kill``."""

    def __init__(self, target: str, factory: bool = False) -> None:
        env = dict(os.environ)
        # the child imports what the parent can import (editable installs, test folders)
        paths = [p for p in sys.path if p]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        cmd = [sys.executable, "-m", "tickcall.control_loop.futures.procworker", target] + (["--factory"] if factory else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.target = target
        try:
            hello = read_frame(self.proc.stdout)
        except FrameError as exc:
            self.kill()
            raise ChildStartError(f"{target}: {exc}") from exc
        if not hello or not hello.get("ready"):
            self.kill()
            error = (hello or {}).get("error") or f"exit code {self.proc.wait()}"
            raise ChildStartError(f"{target}: {error}")
        self.pid = int(hello.get("pid", self.proc.pid))

    def request(self, rid: int, call: Call) -> dict[str, Any]:
        """Run one call; blocks (real time) until the reply. Raises ``ChildDied`` when the child ends."""
        try:
            write_frame(self.proc.stdin, {"id": rid, "call": call.to_dict()})
            reply = read_frame(self.proc.stdout)
        except (BrokenPipeError, OSError, ValueError, FrameError) as exc:
            raise ChildDied(self._death(str(exc))) from exc
        if reply is None:
            raise ChildDied(self._death("pipe closed"))
        return reply

    def _death(self, what: str) -> str:
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return what
        return f"exit code {code}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()

    def close(self) -> None:
        """Ask the child to end (close its stdin), then kill it if it does not within 1 s."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        for stream in (self.proc.stdout,):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
