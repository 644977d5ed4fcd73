"""tickcall: a real-time runtime in which a language model controls a simulation or a game.

This package is the composition root: the ``tickcall`` command line, which is the only place that
wires the four rooms (``envs``, ``control_loop``, ``agent``, ``models``) together.
"""

__version__ = "0.1.0"
