"""Check a model folder cheaply before anything loads it: ``check_model_folder(path)``.

A driver calls this before starting a service actor, so a broken folder is one clear line instead of a
remote traceback after seconds of start-up. Reads only ``config.json`` and the safetensors headers
(8-byte length + JSON), never the weights; no torch.

An adapter folder (``models.adapters``: ``adapter_config.json``, ``adapter_model.safetensors``, the
tokenizer and a ``tickcall.json`` naming its base) is accepted too, when what loads its base is
installed (the one line otherwise names the install command).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tickcall.models.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_base_available,
    is_adapter_folder,
    read_base,
)
from tickcall.models.engine import EngineError


class ModelFolderError(EngineError):
    """A model folder that cannot be loaded; the message names the file and what to do."""


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(
            f"{path} is not readable JSON ({exc}); restore it from the model's source"
        ) from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} must hold a JSON object; restore it from the model's source")
    return data


def _check_safetensors(path: Path) -> None:
    """Header present, parseable, and every tensor's data inside the file (a truncated copy fails)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{path} is truncated ({size} bytes); copy the weights again")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ModelFolderError(
                f"{path} is truncated or not safetensors (header of {n} bytes in a "
                f"{size}-byte file); copy the weights again"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFolderError(
                f"{path} has an unreadable safetensors header; copy the weights again"
            ) from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if ends and 8 + n + max(ends) > size:
        raise ModelFolderError(
            f"{path} is truncated ({size} bytes, its header needs {8 + n + max(ends)}); "
            "copy the weights again"
        )


def check_model_folder(path: str | Path) -> Path:
    """Raise ``ModelFolderError`` unless ``path`` looks loadable: a folder with a JSON ``config.json``, a
    tokenizer, and complete safetensors weights (one file or an index of shards). Returns the path."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist (models load from local folders only)")
    if is_adapter_folder(folder):
        return _check_adapter_folder(folder)
    _read_json(folder / "config.json", "a model folder holds the model's config.json")
    if not (folder / "tokenizer.json").exists():
        raise ModelFolderError(f"{folder / 'tokenizer.json'} is missing: the folder needs its tokenizer")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, "").get("weight_map", {})
        files = sorted({folder / name for name in weight_map.values()})
    else:
        files = [folder / "model.safetensors"]
    for file in files:
        if not file.exists():
            raise ModelFolderError(f"{file} is missing: the folder has no weights (safetensors) to load")
        _check_safetensors(file)
    return folder


def _check_adapter_folder(folder: Path) -> Path:
    """An adapter folder: its config, complete adapter weights, tokenizer, a base it names, and that
    base's package installed."""
    _read_json(folder / ADAPTER_CONFIG, "an adapter folder holds its adapter_config.json")
    if not (folder / "tokenizer.json").exists():
        raise ModelFolderError(f"{folder / 'tokenizer.json'} is missing: the folder needs its tokenizer")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.exists():
        raise ModelFolderError(f"{weights} is missing: the adapter folder has no weights to apply")
    _check_safetensors(weights)
    try:
        check_base_available(read_base(folder))
    except EngineError as exc:
        raise ModelFolderError(str(exc)) from None
    return folder
