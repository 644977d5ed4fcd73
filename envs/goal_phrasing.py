"""Natural-language phrasings of a GoalArena goal, split into train and held-out sets.

A goal is ``{"color": red|green|blue, "avoid": None|N|E|S|W, "forbid": None|"dash"|"run"}``
(``envs.goal_arena``). ``phrase(goal, rng, split)`` writes it as one instruction: one clause per set
field (colour always; avoid and forbid only when set), joined in one of several forms (separate
sentences, or one sentence with ``, and`` / ``;``), in a drawn clause order.

Two things are held out for evaluation (``split="heldout"``), so a model is scored on what it never
saw in training:

* **templates**: every clause and joining form has a TRAIN and a HELDOUT list; the held-out ones are
  new sentence structures and new wording ("Only blue ones count.", "Running is off the table."). The
  colour words are the same in both; direction words come from the same small set (north, northern,
  "the north side"), so what is new is the structure around them, not the goal's vocabulary.
* **combinations**: ``HELDOUT_COMBOS``, 9 of the 45 (colour, avoid, forbid) triples, never drawn in the
  train split (``draw_goal``); every single value still occurs in train inside other triples.

Invariant (unit-tested): no held-out template text and no held-out combination can come out of the
train split, and ``phrase`` is a pure function of (goal, rng state, split). Only ASCII letters,
digits, spaces and ``.,;:'-`` are used (the env's ``spaces.Text`` charset).
"""

from __future__ import annotations

from typing import Any

COLORS: tuple[str, ...] = ("red", "green", "blue")
AVOIDS: tuple[str | None, ...] = (None, "N", "E", "S", "W")
FORBIDS: tuple[str | None, ...] = (None, "dash", "run")
SPLITS: tuple[str, ...] = ("train", "heldout")

_NOUN = {"N": "north", "E": "east", "S": "south", "W": "west"}
_ADJ = {"N": "northern", "E": "eastern", "S": "southern", "W": "western"}

# Placeholders: {c} colour; {n} north/east..; {a} northern/eastern..; clauses are lower-case fragments,
# capitalised when they start a sentence.
COLOR_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "shoot only the {c} targets",
        "hit the {c} targets and nothing else",
        "your targets are the {c} ones",
        "aim for the {c} targets only",
        "take out the {c} targets",
        "go after the {c} targets",
        "destroy only {c} targets",
        "the {c} targets are the ones to shoot",
        "fire only at {c} targets",
        "shoot {c} targets, leave the others alone",
        "hunt the {c} targets",
        "target the {c} ones and ignore the rest",
        "you must hit {c} targets",
    ),
    "heldout": (
        "only {c} ones count",
        "points come from {c} targets alone",
        "the enemy is {c}; spare every other colour",
        "anything {c} is fair game, nothing else is",
        "your job is to bring down {c} targets",
        "let the other colours be and pick off the {c} ones",
    ),
}
AVOID_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "stay out of the {n}",
        "keep out of the {a} part of the arena",
        "avoid the {n} side",
        "do not enter the {a} zone",
        "keep away from the {n}",
        "never go into the {n} side of the arena",
        "stay away from the {a} area",
    ),
    "heldout": (
        "whatever you do, don't set foot in the {a} part",
        "the {n} side is off limits",
        "treat the {a} region as forbidden ground",
    ),
}
FORBID_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "dash": {
        "train": (
            "never dash",
            "do not use dash",
            "dashing is not allowed",
            "no dashing",
            "you may not dash",
            "don't dash at all",
        ),
        "heldout": (
            "dashes are off the table",
            "keep both feet on the ground: no jumps",
            "leave the dash unused",
        ),
    },
    "run": {
        "train": (
            "never run",
            "do not run",
            "running is not allowed",
            "walk, don't run",
            "no running",
            "you may only walk",
        ),
        "heldout": (
            "running is off the table",
            "move at a walking pace, never faster",
            "keep your speed down to a walk",
        ),
    },
}
# How clauses combine: "sentences" (each its own sentence) or (between, before the last) inside one
# sentence: "A, B, and C".
JOINERS: dict[str, tuple[str | tuple[str, str], ...]] = {
    "train": ("sentences", (", ", ", and "), ("; ", "; ")),
    "heldout": ("sentences", (". Also, ", ". Also, "), (", ", ", and while you are at it, ")),
}

# 9 of the 45 triples, held out whole; each colour, avoid and forbid value keeps train triples.
HELDOUT_COMBOS: frozenset[tuple[str, str | None, str | None]] = frozenset(
    {
        ("red", "N", "dash"),
        ("red", "S", None),
        ("red", None, "run"),
        ("green", "E", "run"),
        ("green", "W", "dash"),
        ("green", None, None),
        ("blue", "S", "run"),
        ("blue", "W", None),
        ("blue", "E", "dash"),
    }
)
ALL_COMBOS: tuple[tuple[str, str | None, str | None], ...] = tuple(
    (c, a, f) for c in COLORS for a in AVOIDS for f in FORBIDS
)
TRAIN_COMBOS: tuple[tuple[str, str | None, str | None], ...] = tuple(
    t for t in ALL_COMBOS if t not in HELDOUT_COMBOS
)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")


def combo(goal: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """The goal as a (colour, avoid, forbid) triple."""
    return (goal["color"], goal.get("avoid"), goal.get("forbid"))


def draw_goal(rng: Any, split: str = "train") -> dict[str, Any]:
    """A goal uniformly over the split's combinations (train: the 36 others; heldout: the 9)."""
    _check_split(split)
    pool = sorted(HELDOUT_COMBOS, key=str) if split == "heldout" else TRAIN_COMBOS
    c, a, f = pool[int(rng.integers(len(pool)))]
    return {"color": c, "avoid": a, "forbid": f}


def _pick(rng: Any, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def clauses(goal: dict[str, Any], rng: Any, split: str = "train") -> list[str]:
    """The goal's clauses (lower-case fragments), colour first, in the split's templates."""
    _check_split(split)
    out = [_pick(rng, COLOR_TEMPLATES[split]).format(c=goal["color"])]
    if goal.get("avoid") is not None:
        d = goal["avoid"]
        out.append(_pick(rng, AVOID_TEMPLATES[split]).format(n=_NOUN[d], a=_ADJ[d]))
    if goal.get("forbid") is not None:
        out.append(_pick(rng, FORBID_TEMPLATES[goal["forbid"]][split]))
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def phrase(goal: dict[str, Any], rng: Any, split: str = "train") -> str:
    """One instruction sentence (or a few) for ``goal``; ``rng`` a numpy Generator.

    The clause order is drawn (the colour clause first half of the time, else anywhere), then a
    joining form: separate sentences, or one sentence with the split's joiner."""
    parts = clauses(goal, rng, split)
    if len(parts) > 1 and rng.random() < 0.5:
        order = [int(i) for i in rng.permutation(len(parts))]
        parts = [parts[i] for i in order]
    joiner = JOINERS[split][int(rng.integers(len(JOINERS[split])))]
    if joiner == "sentences" or len(parts) == 1:
        return " ".join(_cap(p) + "." for p in parts)
    between, last = joiner
    return _cap(between.join(parts[:-1]) + last + parts[-1]) + "."


def all_template_texts(split: str) -> list[str]:
    """Every template of ``split`` (clauses and joiners; for the split tests)."""
    _check_split(split)
    out = list(COLOR_TEMPLATES[split]) + list(AVOID_TEMPLATES[split])
    for v in FORBID_TEMPLATES.values():
        out += list(v[split])
    joins = {j.strip(" ,;") for pair in JOINERS[split] if pair != "sentences" for j in pair}
    return out + sorted(j for j in joins if j)
