"""Every bad input to ``tickcall decide`` / ``tickcall eval`` fails with one clear stderr line, no traceback.

Each case runs ``tickcall.cli.main`` in-process. Bad files live in ``tmp_path``; the corrupt model folders
are copies of the shipped CartPole model with ``config.json`` broken or ``model.safetensors`` truncated.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from tickcall.models.shipped import default_model_path

from tickcall.cli import main


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of bad inputs: tools files, corrupt model folders, an unwritable --json target."""
    root = tmp_path_factory.mktemp("bad")
    (root / "notjson.json").write_text("not json")
    (root / "noname.json").write_text('[{"name": 3}]')
    (root / "object.json").write_text('{"name": "f"}')
    (root / "badtype.json").write_text(
        '[{"type": "function", "function": {"name": "f", "parameters": '
        '{"type": "object", "properties": {"a": {"type": 7}}}}}]'
    )
    # issue 19's wrong-but-accepted schemas, through the command (tests/test_tool_schemas.py has them all)
    for name, props in (
        ("enum5", '{"a": {"type": "number", "enum": 5}}'),
        ("minmax", '{"a": {"type": "number", "minimum": 3, "maximum": 1}}'),
        ("propnum", '{"a": 5}'),
        ("emptyname", '{"": {"type": "number"}}'),
    ):
        (root / f"{name}.json").write_text(
            f'[{{"name": "f", "parameters": {{"type": "object", "properties": {props}}}}}]'
        )
    (root / "afile").write_text("x")
    shipped = default_model_path("CartPole-v1")
    shutil.copytree(shipped, root / "badcfg")
    (root / "badcfg" / "config.json").write_text("{oops")
    shutil.copytree(shipped, root / "trunc")
    weights = root / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return root


def _fails_in_one_line(capsys, argv: list[str], code: int, phrase: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tickcall {argv[0]}: ")
    assert phrase in lines[0], lines[0]


DECIDE_CASES = [
    (["--env", "Nope-v9"], "cannot make env 'Nope-v9'"),
    (["--env", "LunarLanderContinuous-v3"], "--backend random"),  # no shipped model: the choices are named
    (["--tools", "{bad}/missing.json"], "cannot read --tools"),
    (["--tools", "{bad}/notjson.json"], "is not valid JSON"),
    (["--tools", "{bad}/noname.json"], "bad tool schema"),
    (["--tools", "{bad}/badtype.json"], "bad tool schema"),
    (["--tools", "{bad}/object.json"], "JSON list of tools"),
    (["--tools", "{bad}/enum5.json"], "enum must be a non-empty list"),
    (["--tools", "{bad}/minmax.json"], "minimum 3 is above maximum 1"),
    (["--tools", "{bad}/propnum.json"], "schema must be an object"),
    (["--tools", "{bad}/emptyname.json"], "parameter name '' is empty"),
    (["--model", "{bad}/badcfg", "--env", "CartPole-v1"], "cannot load model"),
    (["--model", "{bad}/trunc", "--env", "CartPole-v1"], "cannot load model"),
    (["--model", "{bad}/nonexist", "--env", "CartPole-v1"], "does not exist"),
    (["--env", "CartPole-v1", "--template", "zz"], "unknown template 'zz'"),
    (["--env", "CartPole-v1", "--backend", "zz"], "unknown backend 'zz'"),
    (["--env", "CartPole-v1", "--repeat", "0"], "--repeat 0"),
]


@pytest.mark.parametrize(("flags", "phrase"), DECIDE_CASES)
def test_decide_bad_input(capsys, bad, flags, phrase):
    argv = ["decide", "x=+0.01 v=-0.3 a=+0.02 w=+0.5"] + [f.format(bad=bad) for f in flags]
    _fails_in_one_line(capsys, argv, 2, phrase)


HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
CART = ["--env", "CartPole-v1", "--episodes", "1"]
EVAL_CASES = [
    (["--env", "Nope-v9"], "cannot make env 'Nope-v9'"),
    (["--env", "Nope-v9", "--describe"], "cannot make env 'Nope-v9'"),
    (["--env", "Acrobot-v1"], "no expert"),
    pytest.param(
        ["--env", "Ant-v5", "--policy", "random", "--episodes", "1"],
        "cannot make env 'Ant-v5'",
        marks=pytest.mark.skipif(HAS_MUJOCO, reason="the case needs MuJoCo to be missing"),
    ),
    ([*CART, "--policy", "zz"], "unknown policy zz"),
    (["--env", "LunarLanderContinuous-v3", "--policy", "model"], "--backend random"),  # no shipped model for it
    ([*CART, "--policy", "model", "--model", "{bad}/badcfg"], "cannot load model"),
    ([*CART, "--policy", "model", "--model", "{bad}/trunc"], "cannot load model"),
    ([*CART, "--policy", "model", "--model", "{bad}/nonexist"], "does not exist"),
    ([*CART, "--policy", "model", "--model", "{bad}/trunc", "--backend", "zz"], "unknown backend 'zz'"),
    ([*CART, "--json", "{bad}/no/such/dir/out.json"], "does not exist"),
    ([*CART, "--json", "{bad}/afile/out.json"], "does not exist"),
    ([*CART, "--json", "{bad}"], "is a folder"),
    (["--env", "CartPole-v1", "--episodes", "0"], "--episodes 0"),
    ([*CART, "--realtime", "--rate", "0"], "--rate 0 is outside 1-60"),
    ([*CART, "--rate", "61"], "--rate 61 is outside 1-60"),
    ([*CART, "--hold", "0"], "--hold 0"),
    ([*CART, "--delay-ms", "-1"], "--delay-ms -1"),
    ([*CART, "--max-seconds", "0"], "--max-seconds 0"),
    ([*CART, "--max-steps", "0"], "--max-steps 0"),
    ([*CART, "--history", "-1"], "--history -1"),
    ([*CART, "--policy", "model", "--engine-option", "precision"], "is not KEY=VALUE"),
    ([*CART, "--policy", "model", "--engine-option", "a b=1"], "is not KEY=VALUE"),
    ([*CART, "--policy", "model", "--engine-option", "threads=[1, 2]"], "one scalar value"),
    ([*CART, "--engine-option", "threads=2"], "--policy model only"),
]


@pytest.mark.parametrize(("flags", "phrase"), EVAL_CASES)
def test_eval_bad_input(capsys, bad, flags, phrase):
    argv = ["eval"] + [f.format(bad=bad) for f in flags]
    _fails_in_one_line(capsys, argv, 2, phrase)


def test_eval_json_checked_before_work(capsys, bad, monkeypatch):
    """An unwritable --json fails before any episode runs (the evaluation is never called)."""
    import tickcall.envs.evaluate as evaluate_mod

    def boom(*_a, **_k):
        raise AssertionError("evaluate ran before the --json check")

    monkeypatch.setattr(evaluate_mod, "evaluate", boom)
    _fails_in_one_line(capsys, ["eval", *CART, "--json", f"{bad}/afile/out.json"], 2, "--json")


def test_eval_engine_options_reach_the_engine(capsys, tiny_model_path, monkeypatch):
    """--engine-option KEY=VALUE values reach load_engine typed (YAML scalars); an option the engine does
    not take is one line naming it."""
    import tickcall.models.loading as loading

    seen = {}
    real = loading.load_engine

    def spy(spec, backend=None, **options):
        seen.update(options)
        return real(spec, backend=backend, **options)

    monkeypatch.setattr(loading, "load_engine", spy)
    argv = ["eval", *CART, "--policy", "model", "--model", str(tiny_model_path)]
    assert main([*argv, "--engine-option", "precision=fp32", "--engine-option", "threads=1"]) in (0, 1)
    assert seen == {"precision": "fp32", "threads": 1}
    capsys.readouterr()  # the first run's loading progress
    _fails_in_one_line(capsys, [*argv, "--engine-option", "warp_speed=9"], 2, "warp_speed")


def test_eval_good_input_still_works(capsys, tmp_path):
    out = tmp_path / "out.json"
    assert main(["eval", *CART, "--json", str(out)]) == 0
    assert out.exists()
    assert "Traceback" not in capsys.readouterr().err


REC = ["--env", "CartPole-v1", "--episodes", "1"]
RECORD_CASES = [
    (["--env", "Nope-v9", "--out", "{bad}/r.jsonl"], "no scripted expert for 'Nope-v9'"),
    ([*REC, "--out", "{bad}/no/such/dir/r.jsonl"], "does not exist"),
    ([*REC, "--out", "{bad}"], "is a folder"),
    ([*REC, "--out", "{bad}/r.jsonl", "--json", "{bad}/afile/out.json"], "does not exist"),
    (["--env", "CartPole-v1", "--episodes", "0", "--out", "{bad}/r.jsonl"], "--episodes must be >= 1"),
    ([*REC, "--out", "{bad}/r.jsonl", "--epsilon", "2"], "--epsilon must be in [0, 1]"),
    ([*REC, "--out", "{bad}/r.jsonl", "--teacher", "nomod:fn"], "cannot import 'nomod'"),
    ([*REC, "--out", "{bad}/r.jsonl", "--teacher", "sb3:{bad}/none.zip"], "not found"),
]


@pytest.mark.parametrize(("flags", "phrase"), RECORD_CASES)
def test_record_bad_input(capsys, bad, flags, phrase):
    _fails_in_one_line(capsys, ["record"] + [f.format(bad=bad) for f in flags], 2, phrase)
    assert not (bad / "r.jsonl").exists()  # refused before anything was recorded


TRAIN_CASES = [
    (["--steps", "0"], "--steps 0 is too small"),
    (["--teacher-steps", "0"], "--teacher-steps 0 is too small"),
    (["--evaluate", "{bad}/nonexist"], "--evaluate: model folder {bad}/nonexist does not exist"),
    (["--evaluate", "{bad}"], "config.json is missing"),
    (["--evaluate", "{bad}/badcfg"], "config.json is not readable JSON"),
    (["--evaluate", "{bad}/trunc"], "model.safetensors is truncated"),
    (["--evaluate", "{bad}/badcfg", "--episodes", "0"], "--episodes 0 is too small"),
    (["--evaluate", "{bad}/badcfg", "--hz", "0"], "--hz 0 is too small"),
    (["--evaluate", "{bad}/badcfg", "--json", "{bad}/afile/out.json"], "does not exist"),
    (["--export", "{bad}/none.pt"], "no such checkpoint file"),
    (["--card"], "--card adds figures to an --evaluate FOLDER"),
    (["--config", "{bad}/none.yaml"], "config {bad}/none.yaml not found"),
    (["--data", "{bad}/none.jsonl"], "give a tickcall record file"),
    (["--labels", "big"], "--labels big reads the big model's calls of run reports"),
]


@pytest.mark.parametrize(("flags", "phrase"), TRAIN_CASES)
def test_train_bad_input(capsys, bad, flags, phrase):
    """Checked before any data, teacher or model is made (``--steps 0`` used to start a run)."""
    _fails_in_one_line(capsys, ["train"] + [f.format(bad=bad) for f in flags], 2, phrase.format(bad=bad))


@pytest.mark.parametrize(("argv", "phrase"), [
    (["decide", "x", "--repeat", "abc"], "argument --repeat: invalid int value: 'abc'"),
    (["run", "--nope"], "unrecognized arguments: --nope"),
    (["eval"], "the following arguments are required: --env"),
    (["bench", "nosuch"], "invalid choice: 'nosuch'"),
    (["bench", "fleet", "--agents"], "argument --agents: expected one argument"),
    (["nosuch"], "unknown command 'nosuch'"),
])
def test_usage_errors_are_one_line_with_where_the_help_is(capsys, argv, phrase):
    """argparse's own errors (a flag's type, an unknown flag, a missing argument), in every command and
    sub-command: one line naming the problem and the command's --help, exit 2, no usage block."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert phrase in err and "--help`" in err and "usage:" not in err
