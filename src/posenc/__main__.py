"""``python -m posenc``."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a worker process of posenc.experiments.pool imports it
    sys.exit(main())
