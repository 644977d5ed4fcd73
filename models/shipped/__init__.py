"""Model folders shipped inside the repository (a few MB each), trained here by ``tickcall train``.

    from tickcall.models.shipped import default_model_path
    default_model_path()                      # the model for the built-in env, tickcall/Arena-v0
    default_model_path("CartPole-v1")         # the model trained for CartPole-v1

Each folder holds ``config.json``, ``model.safetensors``, the tokenizer (with the 17 SimpleTool
tokens), ``tickcall.json`` (template, env ids) and a model card ``README.md`` with its data, command
and scores; or, for a model on a pretrained base that a package ships (``tickcall-smollm2``), the
peft adapter (``adapter_config.json``, ``adapter_model.safetensors``) instead of the weights
(``models.adapters`` merges it with the base at first load). ``SHIPPED`` maps env ids to folder
names; one folder may serve several envs.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_ENV = "tickcall/Arena-v0"
# env id -> folder under models/shipped (checked in order when an env has no entry of its own)
SHIPPED: dict[str, str] = {
    "tickcall/Arena-v0": "tickcall-arena",  # configs/train-arena.yaml
    "tickcall/CrowdArena-v0": "tickcall-arena",  # each NPC sees and acts exactly as in Arena-v0
    "CartPole-v1": "tickcall-cartpole",  # configs/train-cartpole.yaml (soft targets from the expert's margin)
    # one small folder per env (configs/train-ENV.yaml; docs/benchmarks.md "Shipped students")
    "Acrobot-v1": "tickcall-acrobot",  # teacher: PPO trained on the spot (no scripted expert)
    "MountainCar-v0": "tickcall-mountaincar",
    "MountainCarContinuous-v0": "tickcall-mountaincar-continuous",
    "Pendulum-v1": "tickcall-pendulum",
    "LunarLander-v3": "tickcall-lunarlander",  # teacher: PPO trained on the spot (1M decisions)
    # configs/train-smollm2.yaml: SmolLM2-135M-Instruct + adapter; goals in words need a language model
    "tickcall/GoalArena-v0": "tickcall-smollm2",
    "tickcall/GoalArena-Heldout-v0": "tickcall-smollm2",
}
WEIGHT_FILES = ("config.json", "adapter_config.json")  # a full model folder, or an adapter on a shipped base


def _present(path: Path) -> bool:
    return any((path / name).exists() for name in WEIGHT_FILES)


def available() -> dict[str, Path]:
    """Env id -> model folder, for the shipped folders that are present."""
    return {env: HERE / name for env, name in SHIPPED.items() if _present(HERE / name)}


def default_model_path(env_id: str | None = None) -> Path:
    """The shipped model folder for ``env_id`` (None: the built-in env, ``tickcall/Arena-v0``).

    Raises ``KeyError`` for an env with no shipped model (train one: ``tickcall train``) and
    ``FileNotFoundError`` when the folder is missing from this checkout."""
    env = env_id or DEFAULT_ENV
    name = SHIPPED.get(env)
    if name is None:
        raise KeyError(f"no shipped model for {env!r}; shipped: {', '.join(SHIPPED)}. "
                       "Train one with `tickcall train --config configs/train-tiny.yaml` (envs: [...]).")
    path = HERE / name
    if not _present(path):
        raise FileNotFoundError(f"the shipped model folder {path} is missing from this checkout")
    return path
