"""``python -m webapp`` is the ``lora-studio`` command."""

import sys

from .cli import main

sys.exit(main())
