"""``tickcall train --config configs/train-tiny.yaml``: distil a teacher into a SimpleTool-format student.

Teachers of every kind (``--teacher``: expert, module:function, sb3:FILE.zip, ppo/dqn/sac/... trained
first; ``tickcall.envs.teachers``) and datasets (``--data``: ``tickcall record`` files, a run's
``ticks.jsonl``; ``tickcall.models.training.dataset``).

Stages (each resumable from ``work_dir``): [SB3 teacher] -> teacher rollouts -> tokenizer + student -> training ->
DAgger rounds -> held-out head accuracy and lock-step returns -> model folder with a model card.
``--realtime`` adds the real-time loop figures (16 Hz, wall clock) to the card. ``--evaluate FOLDER``
only scores an existing folder in the real-time loop and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "distil a teacher into a SimpleTool-format student (small model from scratch, or SmolLM2 LoRA)"


# whose calls ``--labels`` reads from run reports (the one-line errors name them)
WHOSE = {"big": "big model's", "played": "engine AI's"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/train-tiny.yaml", help="training config (YAML)")
    parser.add_argument("--out", help="model folder to write (overrides the config's out)")
    parser.add_argument("--work-dir", help="data, checkpoints (overrides the config's work_dir)")
    parser.add_argument(
        "--env",
        action="append",
        dest="envs",
        metavar="ENV_ID",
        help="train on this env (repeatable; overrides the config's envs)",
    )
    parser.add_argument("--steps", type=int, help="training steps of round 0 (overrides the config)")
    parser.add_argument(
        "--teacher",
        metavar="KIND",
        help="who labels the states: expert, module:function, sb3:FILE.zip, ppo|a2c|dqn|sac|td3 "
        "(trained here), none (labels only from --data); overrides the config's teacher.kind",
    )
    parser.add_argument(
        "--teacher-steps",
        type=int,
        metavar="N",
        help="env decisions to train an SB3 teacher for (overrides teacher.steps)",
    )
    parser.add_argument(
        "--data",
        action="append",
        dest="data_files",
        metavar="FILE",
        help="a dataset (tickcall record) or a tickcall run report (ticks.jsonl or its folder) "
        "as round 0's rows (repeatable); without --env: its envs; without --teacher: "
        "no teacher (no DAgger, held-out rows split from the data)",
    )
    parser.add_argument(
        "--labels",
        choices=("call", "big", "played"),
        default="call",
        help="with --data run reports: which call of a tick is its label: call (the applied one, default), "
        "big (a cascade run's big-model call on that tick's turn: distil the big model into the small one) or "
        "played (an advising engine AI's call on the tick's observation: tickcall-reference-engine --ai NAME "
        "--ai-advise)",
    )
    parser.add_argument(
        "--heldout-share",
        type=float,
        metavar="X",
        help="envs labelled only by --data: the share of their rows held out, by whole episodes or "
        "contiguous blocks, seeded by --seed, to measure the student's agreement with the data "
        "(0 < X <= 0.5; default: the config's data.heldout_share, 0.1)",
    )
    parser.add_argument("--seed", type=int, help="seed (overrides the config)")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="after training, measure the real-time loop figures (20 episodes per env)",
    )
    parser.add_argument(
        "--evaluate",
        metavar="FOLDER",
        help="no training: score FOLDER in the real-time loop against the teacher",
    )
    parser.add_argument(
        "--export",
        metavar="CHECKPOINT",
        help="no training: score a checkpoint of this run (work_dir/ckpt-rN.pt) and write the "
        "model folder from it",
    )
    parser.add_argument(
        "--card",
        action="store_true",
        help="with --evaluate: add the figures to FOLDER's scores.json and model card",
    )
    parser.add_argument("--episodes", type=int, default=20, help="real-time episodes per env (default 20)")
    parser.add_argument("--hz", type=float, default=16.0, help="decision rate of the real-time loop (Hz)")
    parser.add_argument("--json", metavar="FILE", help="write the scores as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that cannot work, refused in one line before any data, teacher or model is made (a
    ``--steps 0`` run used to train nothing, mark round 0 done and break the next run's resume)."""
    from tickcall.commands.errors import CommandError, check_writable, one_line, require_at_least

    require_at_least("--steps", args.steps, 1)
    require_at_least("--teacher-steps", args.teacher_steps, 1)
    require_at_least("--episodes", args.episodes, 1)
    require_at_least("--hz", args.hz, 1)
    check_writable("--json", args.json)
    if args.heldout_share is not None:
        from tickcall.models.training.split import check_share

        try:
            check_share(args.heldout_share)
        except ValueError:
            raise CommandError(
                f"--heldout-share {args.heldout_share:g} is not a share of the rows; give a fraction "
                "above 0 and at most 0.5 (e.g. 0.1)"
            ) from None
    if args.export and not Path(args.export).is_file():
        raise CommandError(
            f"--export {args.export}: no such checkpoint file; give one of this run's work_dir/ckpt-rN.pt"
        )
    if args.evaluate:  # config.json and the weights' headers, read without loading anything
        from tickcall.models.engine import EngineError
        from tickcall.models.folder_check import check_model_folder

        try:
            check_model_folder(args.evaluate)
        except EngineError as exc:
            raise CommandError(f"--evaluate: {one_line(exc)}") from None
    if args.card and not args.evaluate:
        raise CommandError("--card adds figures to an --evaluate FOLDER; add --evaluate FOLDER")


def run(args: argparse.Namespace) -> int:
    from tickcall.models.training.pipeline import TrainConfig
    from tickcall.training import make_pipeline

    _check_flags(args)
    path = Path(args.config)
    if not path.exists():
        print(f"tickcall train: config {path} not found", file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig.load(path)
    except (ValueError, TypeError) as exc:
        print(f"tickcall train: bad config {path}: {exc}", file=sys.stderr)
        return 2
    cfg.source_path = str(path)
    if args.out:
        cfg.out = args.out
    if args.work_dir:
        cfg.work_dir = args.work_dir
    if args.envs:
        cfg.envs = list(args.envs)
    if args.teacher:
        cfg.teacher.kind = args.teacher
    if args.teacher_steps is not None:
        cfg.teacher.steps = args.teacher_steps
    if args.labels != "call" and not args.data_files:
        from tickcall.commands.errors import CommandError

        raise CommandError(
            f"--labels {args.labels} reads the {WHOSE[args.labels]} calls of run reports: give them with --data REPORT"
        )
    if args.data_files:
        _use_data(cfg, args)
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.seed is not None:
        cfg.seed = args.seed
    if args.heldout_share is not None:
        cfg.data.heldout_share = args.heldout_share
    if args.realtime:
        cfg.realtime_eval = True
    cfg.realtime_hz = args.hz
    cfg.eval_episodes = args.episodes if args.realtime else cfg.eval_episodes

    if cfg.model.kind == "smollm2" and not args.evaluate and (cfg.teacher.kind != "expert" or cfg.data_files):
        from tickcall.commands.errors import CommandError

        raise CommandError(
            "the smollm2 student trains from the scripted experts only (no --teacher, no --data yet)"
        )
    if cfg.model.kind == "smollm2" and not args.evaluate:
        from tickcall.training import train_smollm2

        scores = train_smollm2(cfg, progress=not args.no_progress)
        print(f"model written to {cfg.out}")
    elif args.export:
        scores = make_pipeline(cfg, progress=not args.no_progress, labels=args.labels).export(
            args.export, args.episodes
        )
        print(f"model written to {cfg.out} from {args.export}")
    elif args.evaluate:
        from tickcall.envs.realtime_eval import compare
        from tickcall.envs.teachers import resolve_spec

        scores = {
            env: compare(
                env,
                args.evaluate,
                args.episodes,
                args.hz,
                log=print,
                teacher=resolve_spec(cfg.teacher.kind, env, cfg.work_dir),
            )
            for env in cfg.envs
        }
        _table(scores)
        if args.card:
            _update_card(Path(args.evaluate), cfg, scores)
    else:
        from tickcall.commands.errors import CommandError, one_line

        try:
            pipeline = make_pipeline(cfg, progress=not args.no_progress, labels=args.labels)
        except ValueError as exc:  # no such teacher, no labels for an env, tools that disagree
            raise CommandError(str(exc)) from None
        try:
            scores = pipeline.run()
        except ValueError as exc:  # a resumed work_dir of another split, a dataset the student cannot hold
            raise CommandError(one_line(exc)) from None
        print(f"model written to {cfg.out}")
        _agreement_table(scores)
        rt = {e: s["realtime"] for e, s in scores["envs"].items() if "realtime" in s}
        if rt:
            _table(rt)
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


def _use_data(cfg, args: argparse.Namespace) -> None:
    """``--data``: the files' envs (or ``--env``'s), no teacher unless ``--teacher`` names one."""
    from tickcall.commands.errors import CommandError, one_line
    from tickcall.training import load_data

    cfg.data_files = list(args.data_files)
    try:
        data = load_data(cfg.data_files, labels=args.labels)
        envs = data.env_ids
    except (OSError, ValueError) as exc:
        raise CommandError(
            f"--data: {one_line(exc)}; give a tickcall record file, or a tickcall run's ticks.jsonl or its folder"
        ) from None
    if args.labels == "big" and not any(data.by_env().values()):
        raise CommandError(
            "--labels big: the --data reports hold no big-model calls; give a cascade run's report"
        )
    if not args.envs:
        cfg.envs = envs
    if not args.teacher:
        cfg.teacher.kind = "none"
        cfg.dagger.rounds = 0


def _table(scores: dict) -> None:
    print(
        f"{'env':<20} {'student':>9} {'teacher':>9} {'ratio':>7} {'legal':>8} {'misses':>7} "
        f"{'P50 ms':>7} {'P90 ms':>7}"
    )
    for env, s in scores.items():
        print(
            f"{env:<20} {s['student_return']:>9.1f} {s['teacher_return']:>9.1f} {100 * s['ratio']:>6.1f}% "
            f"{100 * s['legal_rate']:>7.2f}% {s['deadline_misses']:>7d} {s['decide_p50_ms']:>7.2f} "
            f"{s['decide_p90_ms']:>7.2f}"
        )


def _agreement_table(scores: dict) -> None:
    """Held-out agreement per env: exact call, legal rate, each head and each argument, and how the
    held-out turns were chosen (the data's own turns, or the teacher's fresh rollouts)."""
    envs = {e: s["heldout"] for e, s in scores.get("envs", {}).items() if s.get("heldout", {}).get("n")}
    if not envs:
        return
    print(f"{'env':<20} {'held-out':>8} {'by':<16} {'exact':>8} {'legal':>8}  per head / per argument")
    for env, a in envs.items():
        sp = a.get("split")
        by = f"{len(sp['heldout_groups'])}/{sp['groups']} {sp['unit']}s" if sp else "teacher rollouts"
        heads = " ".join(f"{h} {100 * v:.1f}%" for h, v in a["per_head"].items())
        print(
            f"{env:<20} {a['n']:>8d} {by:<16} {100 * a['exact_call']:>7.2f}% {100 * a['legal_rate']:>7.2f}%  {heads}"
        )
        if a.get("per_arg"):
            args = " ".join(f"{k} {100 * v:.1f}%" for k, v in a["per_arg"].items())
            print(f"{'':<65}{args}")
        sv = a.get("served")
        if sv:
            print(
                f"{'  as served':<20} {sv['n']:>8d} {'engine':<16} {100 * sv['exact_call']:>7.2f}% "
                f"{100 * sv['legal_rate']:>7.2f}%  tool {100 * sv['function']:.1f}% (constrained heads)"
            )


def _update_card(folder: Path, cfg, realtime: dict) -> None:
    """Merge real-time figures into ``folder/scores.json`` and rewrite its model card."""
    from tickcall.models.training.card import write_card

    path = folder / "scores.json"
    scores = json.loads(path.read_text()) if path.exists() else {"envs": {}}
    for env, fig in realtime.items():
        scores.setdefault("envs", {}).setdefault(env, {})["realtime"] = fig
    path.write_text(json.dumps(scores, indent=2) + "\n")
    write_card(folder, cfg, scores)
    print(f"model card updated: {folder / 'README.md'}")
