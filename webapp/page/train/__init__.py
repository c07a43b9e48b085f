"""The Train tab: base model, dataset (checked on upload), parameters, live training, and the
unfinished runs to resume or discard.

``form`` derives the parameter fields from ``TrainingParams``; ``layout`` places the
components; ``view`` turns a dataset check or a run's events into what the page shows;
``actions`` holds what the events do (each method a Gradio handler); ``wiring`` connects them.
``/check_dataset``, ``/train``, ``/stop`` and ``/resume`` are the tab's API (gradio_client,
"Use via API"), with the form's fields as named parameters (``rank=8, epochs=3, ...``); the
page's internal events are private.
"""
