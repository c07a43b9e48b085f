"""Everything that is not a front end; imports no Gradio.

The root holds the vocabulary every wing shares (params, protocol, settings, errors, files);
the wings, from the bottom up: data and machine, models, adapters, train and serve.
docs/architecture.md has the table; tests/test_layout.py holds the imports to it.
"""
