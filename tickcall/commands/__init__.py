"""Sub-commands of the ``tickcall`` CLI; see ``tickcall.cli.COMMANDS``."""
