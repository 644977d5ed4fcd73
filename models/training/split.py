"""A held-out split of a dataset's own rows, by episode or by contiguous block, never by random row.

When no teacher can label fresh states (a run's logged decisions, an engine's recorded play), the
student is scored on rows of the data it never trained on. Neighbouring turns of one episode are
near-identical (16 decisions a second of a slowly moving world), so a split by random row would put
the same situation on both sides and measure memory, not agreement. The split therefore keeps whole
groups on one side:

* **episodes**, when the rows say which episode they belong to (``Record.episode``): a seeded choice
  of whole episodes is held out, as close to ``share`` of the rows as whole episodes allow; taken when
  that lands within half to twice the share (at least two episodes; 7 equal episodes at 0.1 hold one
  out, 14%);
* otherwise (no episodes, or too few: 3 episodes would hold out a third) **contiguous blocks** of
  the rows in episode-then-file order (a run's ``ticks.jsonl`` is in time order): the rows are cut
  into ``ceil(2 / share)`` equal blocks and a seeded choice of ``round(share * blocks)`` of them is
  held out; the ``gap`` training rows (at most half a block) on each side of a held-out block, within
  the same episode, are dropped, so no training row is a held-out row's neighbour.

Invariants: every row lands on exactly one side or in the gap (``train + heldout + dropped == n``);
the rows of one episode (episode split) are never on both sides; the same rows, share and seed give
the same split; each side keeps file order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tickcall.models.training.collect import Record

DEFAULT_SHARE = 0.1  # of a dataset's rows per env, held out when no teacher labels fresh states
MAX_SHARE = 0.5  # more than half held out leaves the student less to learn from than to be judged on
DEFAULT_GAP = 16  # training rows dropped beside a held-out block: one second of turns at 16 Hz
MIN_ROWS = 10  # fewer rows than this: nothing is held out (no figure is better than a figure of one row)


def check_share(share: float) -> float:
    """``share`` if it is a usable held-out share (0 < share <= 0.5); ValueError naming the range."""
    if not (isinstance(share, int | float) and 0.0 < float(share) <= MAX_SHARE):
        raise ValueError(
            f"held-out share must be > 0 and <= {MAX_SHARE} (a fraction of the rows, e.g. 0.1), not {share!r}"
        )
    return float(share)


@dataclass
class Split:
    """Training rows, held-out rows and how they were cut (``info()``: for scores.json and the card)."""

    train: list[Record]
    heldout: list[Record]
    unit: str  # "episode", "block" or "none" (too few rows: nothing held out)
    share: float
    seed: int
    groups: int = 0  # episodes or blocks in all
    heldout_groups: list[int] = field(default_factory=list)  # which (episode ids, or block indices)
    dropped: int = 0  # training rows left out as the gap beside held-out blocks

    def info(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "share": self.share,
            "seed": self.seed,
            "groups": self.groups,
            "heldout_groups": list(self.heldout_groups),
            "train_rows": len(self.train),
            "heldout_rows": len(self.heldout),
            "gap_dropped": self.dropped,
        }


def split_rows(
    rows: Sequence[Record], share: float = DEFAULT_SHARE, seed: int = 0, gap: int = DEFAULT_GAP
) -> Split:
    """Split ``rows`` (one env's) into training and held-out rows (see the module docstring)."""
    share = check_share(share)
    rows = list(rows)
    if len(rows) < MIN_ROWS:
        return Split(rows, [], "none", share, seed)
    rng = random.Random(f"heldout-split:{seed}")  # a string seed: stable across Python versions
    episodes = [r.episode for r in rows]
    if all(e is not None for e in episodes):
        ids = list(dict.fromkeys(episodes))  # first-appearance order
        if len(ids) >= 2:
            sp = _by_episode(rows, ids, share, seed, random.Random(f"heldout-split:{seed}"))
            if share / 2 <= len(sp.heldout) / len(rows) <= min(2 * share, MAX_SHARE):
                return sp
    return _by_block(rows, share, seed, gap, rng)


def _by_episode(rows: list[Record], ids: list[Any], share: float, seed: int, rng: random.Random) -> Split:
    sizes: dict[Any, int] = dict.fromkeys(ids, 0)
    for r in rows:
        sizes[r.episode] += 1
    want = share * len(rows)
    order = list(ids)
    rng.shuffle(order)
    held: list[Any] = []
    n = 0
    for e in order[:-1]:  # at least one episode stays to train on
        if n >= want:
            break
        # take an episode while it brings the held-out count closer to the share
        if held and abs(n + sizes[e] - want) > abs(n - want):
            continue
        held.append(e)
        n += sizes[e]
    chosen = set(held)
    return Split(
        [r for r in rows if r.episode not in chosen],
        [r for r in rows if r.episode in chosen],
        "episode",
        share,
        seed,
        len(ids),
        sorted(held),
    )


def _by_block(rows: list[Record], share: float, seed: int, gap: int, rng: random.Random) -> Split:
    # episode-then-file order: rows of a lock-step rollout interleave episodes in the file, and a block
    # of the file would then hold a little of every episode; a run's rows (no episode) keep file order
    first: dict[Any, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r.episode, i)
    order = sorted(range(len(rows)), key=lambda i: (first[rows[i].episode], i))
    blocks = min(len(rows), math.ceil(2 / share - 1e-9))
    size = math.ceil(len(rows) / blocks)
    blocks = math.ceil(len(rows) / size)
    k = min(blocks - 1, max(1, round(share * blocks)))
    held = sorted(rng.sample(range(blocks), k))
    gap = min(gap, size // 2)  # small data: the gap never eats more than half a block on each side
    side = ["train"] * len(rows)  # by position in ``order``
    for b in held:
        for p in range(b * size, min(len(rows), (b + 1) * size)):
            side[p] = "heldout"
    dropped = 0
    for p in range(len(rows)):
        if side[p] != "heldout":
            continue
        ep = rows[order[p]].episode
        for q in range(max(0, p - gap), min(len(rows), p + gap + 1)):
            if side[q] == "train" and rows[order[q]].episode == ep:
                side[q] = "gap"
                dropped += 1
    where = {order[p]: side[p] for p in range(len(rows))}
    return Split(
        [r for i, r in enumerate(rows) if where[i] == "train"],
        [r for i, r in enumerate(rows) if where[i] == "heldout"],
        "block",
        share,
        seed,
        blocks,
        held,
        dropped,
    )
