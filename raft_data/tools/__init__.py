"""Tools: look-only and one-off commands beside the stages: status, inspect, sql over a round, the look-only
printers, the held-out reward of any model folder, and fetching the default assets.
"""
