"""Datasets: the rules of a row (``check``), a dataset read whole and split (``scan``), its
tokens as the trainer sees them (``tokens``), and files arriving from outside (``uploads``).

May import: the shared vocabulary at core/'s root (errors, files, settings). Nothing here
loads a model or starts a process.
"""
