"""The BFCL round-trip figures as a table: ``pytest -s -q tests/test_bfcl_table.py`` prints it.

The numbers are those ``test_format.py::test_bfcl_round_trip`` asserts (same cached run); this
module only counts and prints them, with the answers BFCL gives that its own schema refuses, for the
table in docs/simpletool-format.md ("BFCL round trip").
"""

from __future__ import annotations

import bfcl_round_trip
import pytest

COLUMNS = (
    "category",
    "tool sets",
    "refused >6 params",
    "refused schema",
    "calls",
    "round-tripped legal",
    "later option",
    "answer illegal",
)


def _row(t: bfcl_round_trip.Tally) -> tuple[object, ...]:
    return (
        t.category,
        t.tool_sets,
        t.refused_arity,
        t.refused_schema,
        t.calls,
        t.round_tripped,
        t.later_option,
        len(t.answer_illegal),
    )


def test_bfcl_round_trip_table():
    if bfcl_round_trip.data_dir() is None:
        pytest.skip("bfcl-eval data not installed (scripts/setup.sh --dev)")
    tallies = [bfcl_round_trip.round_trip(c) for c in bfcl_round_trip.CATEGORIES]
    rows = [_row(t) for t in tallies]
    totals = ("all", *(sum(r[i] for r in rows) for i in range(1, len(COLUMNS))))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in (*rows, totals)]
    print("\n" + "\n".join(lines))
    print("\nanswers illegal under their own schema:")
    for t in tallies:
        for answer_id, why in t.answer_illegal:
            print(f"  {answer_id}: {why}")
    for t in tallies:  # the counts add up: every call is round-tripped or counted as illegal
        assert t.round_tripped + len(t.answer_illegal) + len(t.failures) == t.calls
