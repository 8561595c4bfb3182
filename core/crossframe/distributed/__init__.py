"""Beyond one device: where a worker sits (:mod:`.world`), which rows it trains on
(:mod:`.sharding`), and the launchers that start workers here (:mod:`.launch`) or on Ray (:mod:`.ray`).

Nothing here imports a framework; each backend joins the job with its own collectives through
:meth:`crossframe.backend.Backend.init_distributed`.
"""

from __future__ import annotations

from typing import Any

from crossframe.distributed.sharding import check_shardable, shard_rows

_WORLD = ("free_port", "is_worker", "record_failure", "world_from_env")


def __getattr__(name: str) -> Any:
    """The :mod:`.world` helpers, imported on first use (the data loaders import this package early)."""
    if name in _WORLD:
        from crossframe.distributed import world

        return getattr(world, name)
    raise AttributeError(f"module 'crossframe.distributed' has no attribute {name!r}")


__all__ = ["check_shardable", "free_port", "is_worker", "record_failure", "shard_rows", "world_from_env"]
