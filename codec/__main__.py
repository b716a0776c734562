"""``python -m codec`` runs the command line."""

import sys

from codec.cli import main

if __name__ == "__main__":
    sys.exit(main())
