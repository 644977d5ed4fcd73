"""``tickcall record --env ID --teacher KIND --episodes N --out FILE``: a teacher's decisions as a dataset.

The file (``models.training.dataset``: a header with the env's tools, then one labelled turn per
line) trains a student with ``tickcall train --data FILE``. ``--teacher`` takes every kind of
``tickcall.envs.teachers``: ``expert``, ``module:function``, ``sb3:FILE.zip``, or ``ppo``/``a2c``/
``dqn``/``sac``/``td3`` trained first (``--teacher-steps``; the zip is kept beside ``--out``).

``--env engine:tcp://HOST:PORT`` records a game engine's own play over the bridge instead (protocol
1.2: each observation carries the call the engine's AI or player took, ``played``; the reference
engine sends it with ``--ai chase``): ``--episodes`` complete episodes counted from the engine's
episode messages, ``--wait-s`` for the engine (``tickcall.envs.engine_recording.record_engine``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from tickcall.commands.errors import CommandError, check_writable

HELP = "record a teacher's decisions on an env as a training dataset (JSONL)"


@dataclass
class Args:
    """The command's settings, one field per flag (``--teacher-steps`` = ``teacher_steps``)."""

    env: str = field(
        metadata={
            "help": "gymnasium env id (e.g. Acrobot-v1), or engine:tcp://HOST:PORT (an engine's own play)"
        }
    )
    out: str = field(metadata={"help": "dataset file to write (JSONL)"})
    teacher: str = field(
        default="expert",
        metadata={"help": "expert, module:function, sb3:FILE.zip, or ppo|a2c|dqn|sac|td3 trained first"},
    )
    episodes: int = field(default=20, metadata={"help": "seeded episodes to record"})
    seed: int = field(default=0, metadata={"help": "first episode seed (episode i: seed + i)"})
    epsilon: float = field(
        default=0.0, metadata={"help": "rate of random calls executed (labels stay the teacher's)"}
    )
    history_len: int = field(default=0, metadata={"help": "history items per turn (as the student will run)"})
    max_decisions: int = field(default=1000, metadata={"help": "decisions per episode at most"})
    text_labels: bool = field(
        default=False, metadata={"help": "the teacher decides on the values the text shows"}
    )
    teacher_steps: int = field(default=50_000, metadata={"help": "env decisions to train an SB3 teacher for"})
    work_dir: str | None = field(
        default=None, metadata={"help": "where a trained teacher's zip goes (default: beside --out)"}
    )
    json: str | None = field(default=None, metadata={"help": "write what was recorded as JSON"})
    wait_s: float = field(
        default=60.0, metadata={"help": "engine: seconds to wait for the engine (and for it to go on)"}
    )

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise CommandError(f"--episodes must be >= 1, not {self.episodes}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise CommandError(f"--epsilon must be in [0, 1], not {self.epsilon}")
        if self.history_len < 0 or self.max_decisions < 1 or self.teacher_steps < 1:
            raise CommandError("--history-len must be >= 0, --max-decisions and --teacher-steps >= 1")
        if self.wait_s <= 0:
            raise CommandError(f"--wait-s must be > 0 seconds, not {self.wait_s:g}")
        if self.env.startswith("engine:"):
            from tickcall.envs.engine_bridge_world import EngineWorldError, endpoint_from_spec

            try:
                endpoint_from_spec(self.env)
            except EngineWorldError as exc:
                raise CommandError(str(exc)) from None
            if self.teacher not in ("expert", "engine"):
                raise CommandError(
                    f"--teacher {self.teacher}: an engine's recording is labelled by the engine's own play "
                    "(obs.played); leave --teacher out"
                )
            if self.epsilon or self.history_len or self.text_labels:
                raise CommandError(
                    "--epsilon, --history-len and --text-labels do not apply to an engine's recording "
                    "(its rows are the engine's own play on the turn text, no history); leave them out"
                )
        # both files are written after the recording: a path that cannot be written fails now
        check_writable("--out", self.out)
        check_writable("--json", self.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(
            flag,
            type=kind,
            required=required,
            help=f.metadata["help"],
            default=None if required else f.default,
        )


def run(ns: argparse.Namespace) -> int:
    from tickcall.envs.recording import record_dataset
    from tickcall.envs.teachers import TeacherBudget

    args = Args(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(Args)})
    if args.env.startswith("engine:"):
        return _record_engine(args)
    try:
        info = record_dataset(
            args.env,
            args.teacher,
            args.episodes,
            args.out,
            seed=args.seed,
            epsilon=args.epsilon,
            history_len=args.history_len,
            max_decisions=args.max_decisions,
            text_labels=args.text_labels,
            budget=TeacherBudget(steps=args.teacher_steps, seed=args.seed),
            work_dir=args.work_dir or str(Path(args.out).parent),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


def _record_engine(args: Args) -> int:
    """``--env engine:...``: the engine's own play (protocol 1.2, obs.played) as the dataset."""
    from tickcall.envs.engine_recording import RecordingError, record_engine

    try:
        info = record_engine(args.env, args.episodes, args.out, env_kwargs={"wait_s": args.wait_s})
    except RecordingError as exc:
        raise CommandError(str(exc), code=1) from None
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0
