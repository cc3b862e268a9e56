"""Data in: reading prompt files, stable prompt ids and the held-out split, each round's draw, candidates from
files (`generate.extra_sources`), and the chat-template and length rules applied before sampling.
"""
