"""The files of an adapter folder, named once: the worker writes them, the store, the
registry and the exports read them, and the worker must not import the store to know them."""

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
METADATA_FILE = "metadata.json"
EVENTS_FILE = "events.jsonl"
MODEL_INDEX = "model.safetensors.index.json"  # a full fine-tuning run's output is a model
TRAINING_FILE = "training_config.json"  # and this records how it was trained
TEST_FILE = "test.jsonl"  # the run's held-out rows, evaluated once it is published
EXPORTED_FILES = (WEIGHTS_FILE, CONFIG_FILE, METADATA_FILE, EVENTS_FILE)
