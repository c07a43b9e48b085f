"""``python -m webapp`` is the ``lora-studio`` command."""

import sys

from webapp.cli.main import main

sys.exit(main())
