"""The ``crossframe`` command line."""
