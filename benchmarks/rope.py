"""RoPE benchmark: the same code as ``posenc bench --suite rope``.

Usage: ``python benchmarks/rope.py [--quick] [--out DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import sys

from posenc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "rope", *sys.argv[1:]]))
