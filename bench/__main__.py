"""``python -m bench``: see bench/README.md and ``python -m bench --help``."""

import sys

from .harness import main

if __name__ == "__main__":
    sys.exit(main())
