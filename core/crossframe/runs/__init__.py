"""Reading run directories: list them, summarise one, diff two (``crossframe runs``).

Listing reads only small files (the latest checkpoint's ``state.json`` and directory sizes), so a
thousand runs list in well under a second.
"""

from crossframe.runs.summary import RunSummary, find_runs, list_runs, summarize

__all__ = ["RunSummary", "find_runs", "list_runs", "summarize"]
