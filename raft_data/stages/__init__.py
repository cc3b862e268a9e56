"""Stages: generate, score, select and evaluate, each a plain function of (config, round) that reads the folders
of the stages before it and writes its own artifact folder. No argument parsing here: see `raft_data.cli`.
"""
