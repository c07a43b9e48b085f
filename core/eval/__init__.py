"""Evaluation: a held-out file's rows answered by several models (a base and its adapters, on
the engine that serves chats), scored against their references, judged by an LLM, and kept.

``cases`` reads the rows; ``generation`` answers them; ``metrics`` scores an answer;
``judge`` asks a judge; ``store`` keeps evaluations; ``runner`` runs one.

May import: serve, train, adapters, models, machine, data and core/'s root.
"""
