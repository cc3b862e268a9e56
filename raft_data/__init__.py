"""raft_data: build RAFT rounds as resumable Parquet artifacts (generate, score, select)."""

__version__ = "0.1.0"
