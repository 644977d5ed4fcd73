"""Text that means something (issue 15): a per-env catalog YAML names tools, parameters and the
observation for every stage; tool text follows the action space as wrapped (RescaleAction); vector
envs are refused with one clear line."""

from __future__ import annotations

import gymnasium as gym
import pytest


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    from tickcall.envs import catalog as cat

    monkeypatch.setattr(cat, "CATALOG", dict(cat.CATALOG))  # entries added here stay in this test
    path = tmp_path / "envs.yaml"
    path.write_text("""
Pendulum-v1:
  tool: motor
  description: "Joint torque, {low} to {high} N m."
  params: [{name: torque, description: "positive: counter-clockwise"}]
  obs:
    - {name: cos, description: cosine of the angle}
    - {name: sin}
    - {name: w, unit: rad/s, description: angular velocity}
  precision: 2
  noop: 0.0
""")
    return cat, path


def test_a_catalog_yaml_names_tools_arguments_and_the_observation(catalog):
    from tickcall.envs.binding import make_binding

    cat, path = catalog
    assert set(cat.load_catalog(path)) == {"Pendulum-v1"}
    b = make_binding("Pendulum-v1")
    fn = b.tools[0]["function"]
    assert fn["name"] == "motor"
    assert fn["description"] == (
        "Joint torque, -2 to +2 N m. Observation: cos cosine of the angle, sin, w angular velocity (rad/s)."
    )
    assert fn["parameters"]["properties"]["torque"]["description"] == "positive: counter-clockwise"
    obs, _ = b.env.reset(seed=0)
    assert b.obs_text(obs).split()[0].startswith("cos=") and len(b.obs_text(obs).split()[2]) == len("w=+0.00")


def test_the_catalog_env_var_reaches_every_process(catalog, monkeypatch):
    from tickcall.envs.binding import make_binding

    cat, path = catalog
    monkeypatch.setattr(cat, "_loaded_from_env", None)
    monkeypatch.setenv(cat.CATALOG_ENV_VAR, str(path))
    assert make_binding("Pendulum-v1").tools[0]["function"]["name"] == "motor"


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("X-v0: {tool: a, colour: red}", "unknown catalog keys colour"),
        ("X-v0: {params: [a, b, c, d, e, f, g]}", "at most 6"),
        ("X-v0: {obs: [{name: x, size: 3}]}", "name or {name, unit, description}"),
    ],
)
def test_catalog_mistakes_name_the_env_and_the_key(catalog, tmp_path, bad, msg):
    cat, _ = catalog
    p = tmp_path / "bad.yaml"
    p.write_text(bad)
    with pytest.raises(ValueError, match=msg):
        cat.load_catalog(p)


def test_rescaled_action_spaces_get_matching_tool_text():
    from gymnasium.wrappers import ClipAction, RescaleAction
    from tickcall.envs.binding import make_binding

    plain = make_binding(gym.make("Pendulum-v1")).tools[0]["function"]
    assert plain["description"] == "Torque on the pendulum joint, -2 to +2."  # the text before this change
    scaled = make_binding(RescaleAction(gym.make("Pendulum-v1"), -1.0, 1.0)).tools[0]["function"]
    assert scaled["description"] == "Torque on the pendulum joint, -1 to +1."
    assert scaled["parameters"]["properties"]["value"]["maximum"] == 1.0
    clipped = make_binding(ClipAction(gym.make("Pendulum-v1"))).tools[0]["function"]
    assert clipped["description"] == "Torque on the pendulum joint, -2 to +2."  # the bounds it clips to
    car = make_binding(RescaleAction(gym.make("MountainCarContinuous-v0"), -0.5, 0.5)).tools[0]["function"]
    assert car["description"] == "Engine force, -0.5 (full left) to +0.5 (full right)."


def test_vector_envs_are_refused_with_one_clear_line():
    from tickcall.envs.binding import make_binding

    env = gym.make_vec("CartPole-v1", num_envs=2)
    with pytest.raises(
        ValueError, match=r"^CartPoleVectorEnv is a vector env: tickcall binds one env per loop"
    ):
        make_binding(env)
    env.close()


def test_an_env_can_name_itself_in_its_metadata():
    from tickcall.envs.binding import make_binding

    class Thermostat(gym.Env):
        metadata = {
            "tickcall": {
                "tool": "heat",
                "description": "Heater power, {low} to {high}.",
                "params": [{"name": "power", "description": "0: off"}],
                "obs": [{"name": "temp", "unit": "C"}],
                "precision": 1,
            }
        }
        action_space = gym.spaces.Box(0.0, 1.0, (1,))
        observation_space = gym.spaces.Box(-50.0, 50.0, (1,))

    b = make_binding(Thermostat())
    fn = b.tools[0]["function"]
    assert fn["name"] == "heat" and fn["description"] == "Heater power, 0 to +1. Observation: temp (C)."
    assert list(fn["parameters"]["properties"]) == ["power"]
    assert b.obs_text([21.44]) == "temp=+21.4"
