"""Published adapters: the folder's files (``layout``), the store that lists, renames,
imports and fuses them, and their exports (PEFT, GGUF, Ollama).

May import: models, machine, data and core/'s root.
"""
