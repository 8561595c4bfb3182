"""``crossframe.testing``: the conformance kit any backend plugin runs against itself.

One line in a plugin's test suite::

    from crossframe.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybackend"

The pytest plugin (entry point ``pytest11``) also offers fixtures; see
:mod:`crossframe.testing.pytest_plugin`.
"""

from crossframe.testing.conformance import BackendConformance

__all__ = ["BackendConformance"]
