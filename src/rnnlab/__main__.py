"""``python -m rnnlab``: the ``rnnlab`` command, for installs where the script is not on PATH."""
import sys

from .cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    sys.exit(main())
