"""Which rows of a global step batch belong to which process: the data floor owns it
(:mod:`crossframe.data.sharding`, used by the loaders); this path stays for old callers."""

from crossframe.data.sharding import check_shardable, shard_rows

__all__ = ["check_shardable", "shard_rows"]
