"""``python -m smoothapi.cli`` (and ``torchrun ... -m smoothapi.cli``) runs the command line."""

import sys

try:
    from .main import main
except KeyboardInterrupt:  # Ctrl-C while the command starts (importing torch ...): one line
    print("smoothapi: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
