"""LoRA Studio's core: everything that is not the page (no Gradio here)."""
