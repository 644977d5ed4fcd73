"""The one dataset format on disk for every teacher: a versioned JSONL file of labelled turns.

A dataset is what ``tickcall record`` writes and ``tickcall train --data`` reads; every teacher
(scripted expert, Python callable, Stable-Baselines3 model, logged decisions of a bigger model) ends
up here, so the student's training never depends on where the labels came from::

    {"format": "tickcall-dataset", "version": 1, "teacher": "ppo", "envs": {"Acrobot-v1": {
        "tools": [...OpenAI tool dicts...], "physics_hz": 5.0}}, "meta": {...}}      <- line 1: header
    {"env_id": "Acrobot-v1", "query": "c1=+0.998 ...", "history": [], "call": {"name": "torque",
        "arguments": {"direction": "neg"}}}                                          <- one row per turn
    {"env_id": ..., "query": ..., "history": [...], "call": {...}, "logits": {"direction": {"neg": 1.2, ...}}}
    {"env_id": ..., "query": ..., "call": {...}, "episode": 3}                      <- optional episode

The rows are exactly the pipeline's own ``Record`` JSON (``models.training.collect.Record``: the
turn text ``query`` + ``history`` lines, the teacher's ``call``, optional ``logits`` = the teacher's
scores ``{parameter: {value: logit}}``; optional ``episode``: the episode the turn belongs to, so a
held-out split keeps an episode on one side, ``models.training.split``), which the pipeline already
writes per round in its ``work_dir`` (``data-ENV-rN.jsonl``); a dataset adds the header line so the
file carries its own tools. A file without ``episode`` reads as before (the field is optional and
not written when unknown), so version 1 still describes every file.

Invariants: every row's ``env_id`` is in the header's ``envs``; every row's call names one of that
env's tools (checked on read, so a dataset that trains is a dataset whose labels are callable);
``version`` is bumped when a field changes meaning (a reader refuses a newer version).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from tickcall.models.calls import Call
from tickcall.models.tools import ToolSpec, normalize_tools
from tickcall.models.training.collect import Record

FORMAT = "tickcall-dataset"
VERSION = 1


class EnvInfo(msgspec.Struct, forbid_unknown_fields=True):
    """One env of a dataset: its tools (OpenAI-style dicts, prompt order) and physics rate (Hz; the
    real-time loop holds a decision ``physics_hz / 16`` steps; None when unknown, e.g. an engine)."""

    tools: list[dict[str, Any]]
    physics_hz: float | None = None


class Header(msgspec.Struct, forbid_unknown_fields=True):
    """Line 1 of a dataset. ``teacher``: what labelled it (``expert``, ``ppo``, ``module:fn``,
    ``sb3:file.zip``, ``ticks:run/``); ``meta``: free-form provenance (episodes, seeds, returns)."""

    format: str
    version: int
    envs: dict[str, EnvInfo]
    teacher: str = ""
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


class CallRow(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Row(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One labelled turn: the ``Record`` JSON (see the module docstring)."""

    env_id: str
    query: str
    call: CallRow
    history: list[str] = msgspec.field(default_factory=list)
    logits: dict[str, dict[str, float]] | None = None
    episode: int | None = None  # the episode the turn belongs to (None: unknown; not written then)


class Dataset(msgspec.Struct):
    """A dataset in memory: the header and the records (``Record``, the pipeline's row type)."""

    header: Header
    records: list[Record]

    def tools(self, env_id: str) -> list[ToolSpec]:
        return normalize_tools(self.header.envs[env_id].tools)

    @property
    def env_ids(self) -> list[str]:
        return list(self.header.envs)

    def by_env(self) -> dict[str, list[Record]]:
        """Records per env, in file order, every env of the header present (possibly empty)."""
        out: dict[str, list[Record]] = {e: [] for e in self.header.envs}
        for r in self.records:
            out[r.env_id].append(r)
        return out


def make_header(envs: dict[str, EnvInfo], teacher: str = "", meta: dict[str, Any] | None = None) -> Header:
    return Header(FORMAT, VERSION, envs, teacher, dict(meta or {}))


def row_of(record: Record) -> Row:
    return Row(
        record.env_id,
        record.query,
        CallRow(record.call.name, dict(record.call.arguments)),
        list(record.history),
        record.logits,
        record.episode,
    )


def record_of(row: Row) -> Record:
    return Record(
        row.env_id,
        row.query,
        list(row.history),
        Call(row.call.name, dict(row.call.arguments)),
        row.logits,
        row.episode,
    )


_encoder = msgspec.json.Encoder()


def write_dataset(path: str | Path, header: Header, records: Iterable[Record]) -> int:
    """Write header + rows (atomically: a ``.tmp`` file renamed into place); returns the row count.
    Raises ValueError for a row whose env or tool the header does not name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tools = {e: {t.name for t in normalize_tools(i.tools)} for e, i in header.envs.items()}
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("wb") as f:
        f.write(_encoder.encode(header) + b"\n")
        for r in records:
            _check(r, tools, f"row {n + 1}")
            f.write(_encoder.encode(row_of(r)) + b"\n")
            n += 1
    tmp.replace(path)
    return n


def read_dataset(path: str | Path) -> Dataset:
    """Read a dataset file (ValueError naming the line for anything malformed or inconsistent)."""
    path = Path(path)
    lines = path.read_bytes().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file (a dataset starts with its header line)")
    try:
        header = msgspec.json.decode(lines[0], type=Header)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}:1: not a tickcall dataset header: {exc}") from None
    if header.format != FORMAT:
        raise ValueError(f"{path}:1: format {header.format!r}, expected {FORMAT!r}")
    if header.version > VERSION:
        raise ValueError(f"{path}:1: dataset version {header.version} is newer than this reader ({VERSION})")
    tools = {e: {t.name for t in normalize_tools(i.tools)} for e, i in header.envs.items()}
    dec = msgspec.json.Decoder(Row)
    records = []
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = record_of(dec.decode(line))
        except msgspec.ValidationError as exc:
            raise ValueError(f"{path}:{k}: {exc}") from None
        _check(rec, tools, f"{path}:{k}")
        records.append(rec)
    return Dataset(header, records)


def is_dataset(path: str | Path) -> bool:
    """True when the file's first line is a dataset header (cheap: reads one line)."""
    with Path(path).open("rb") as f:
        first = f.readline()
    try:
        return json.loads(first).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


def merge(datasets: Sequence[Dataset]) -> Dataset:
    """One dataset from several (``--data`` repeated): the same env must carry the same tools."""
    envs: dict[str, EnvInfo] = {}
    for d in datasets:
        for e, info in d.header.envs.items():
            if e in envs and normalize_tools(envs[e].tools) != normalize_tools(info.tools):
                raise ValueError(f"{e}: the datasets disagree on its tools")
            envs.setdefault(e, info)
    teacher = "+".join(dict.fromkeys(d.header.teacher for d in datasets))
    return Dataset(make_header(envs, teacher), [r for d in datasets for r in d.records])


def _check(rec: Record, tools: dict[str, set[str]], where: str) -> None:
    names = tools.get(rec.env_id)
    if names is None:
        raise ValueError(f"{where}: env {rec.env_id!r} is not in the header ({', '.join(tools)})")
    if rec.call.name not in names:
        raise ValueError(
            f"{where}: call {rec.call.name!r} is not a tool of {rec.env_id} ({', '.join(sorted(names))})"
        )
