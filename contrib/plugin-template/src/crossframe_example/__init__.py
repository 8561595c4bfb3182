"""crossframe plugin `example`: one dataset, registered below.

crossframe imports this module through its entry point on every command, so it stays
cheap: the hook imports the implementation only when crossframe calls it.
"""

from __future__ import annotations

from typing import Any

from crossframe import hookimpl


@hookimpl
def register_datasets(register: Any) -> None:
    """Register the dataset `example` with its params schema."""
    from crossframe_example.dataset import RingsParams, load_rings

    register("example", load_rings, schema=RingsParams,
             description="seeded concentric rings")
