"""crossframe's benchmarks: each one measures crossframe beside a native baseline in the same run.

Run them all with ``python -m benchmarks [--quick] [--out FILE.json]`` from the repository root.

- :mod:`benchmarks.torch_step`: training steps per second of ``crossframe.run`` (torch backend)
  against a hand-written torch loop on the same model, data, optimizer and schedule.
- :mod:`benchmarks.startup`: wall time of ``crossframe --help``, ``crossframe plugins`` and
  ``import crossframe`` in fresh processes, with 0 and with 50 extra (dummy) plugins installed.

Nothing here asserts on timings; the numbers are for people to read (``docs/benchmarks.md``).
"""
