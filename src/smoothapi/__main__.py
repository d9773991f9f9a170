"""``python -m smoothapi`` runs the command line."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command starts (importing torch ...): one line
    print("smoothapi: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
