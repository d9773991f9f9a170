"""``python -m smoothapi.cli`` (and ``torchrun ... -m smoothapi.cli``) runs the command line."""

import sys

from . import main

sys.exit(main())
