"""LoRA Studio's front ends: the command line, and the page (composes ``core``)."""
