"""The configs that ship with tickcall (run, serve, train, quantize YAML files).

``config_path("run.yaml")`` finds one whether tickcall runs from a checkout or from an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """The path of the shipped config ``name`` (e.g. ``"run.yaml"``); it may not exist."""
    return CONFIG_DIR / name
