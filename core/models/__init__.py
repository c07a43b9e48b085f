"""Base models: read a model folder without loading it (``inspect``), import a GGUF file,
quantize, fetch the demo model, build the toy model tests use, download from the hub.

May import: machine, data and core/'s root.
"""
