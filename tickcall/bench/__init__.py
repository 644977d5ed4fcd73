"""Benchmarks behind ``tickcall bench NAME``: each module defines ``add_arguments`` and ``run``,
prints a table and writes ``--json FILE``. Side-by-side comparisons run in one process."""
