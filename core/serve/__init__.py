"""Serving models: the registry of base models and adapters (hot reload), the engine (one
MLX thread serves every generation) and the OpenAI-compatible API.

May import: adapters, models, machine, data and core/'s root; never train.
"""
