"""``python -m facebench ...`` is the ``facebench`` command."""

import sys

from facebench.benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
