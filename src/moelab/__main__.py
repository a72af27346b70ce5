"""`python -m moelab`: the same as the `moelab` command."""

import sys

from .cli import main

if __name__ == "__main__":  # spawned processes (runs side by side: parallel.py) import this module again
    sys.exit(main())
