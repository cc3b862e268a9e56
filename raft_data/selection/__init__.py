"""Selection: the DuckDB engine that ranks a round's scored samples with the queries in `sql/` (one file per
strategy, plus shared views and metrics), its data tests, and the dataset card of `selected/`.
"""
