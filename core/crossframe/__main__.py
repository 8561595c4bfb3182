"""``python -m crossframe``: the command line."""

from crossframe.cli.main import entry

entry()
