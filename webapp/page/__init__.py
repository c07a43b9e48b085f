"""The Gradio page: ``app`` builds it, ``studio`` is its composition root (the core services
every tab shares), one module per tab or panel, and the small SVG charts."""
