"""``python -m rnnlab``: the ``rnnlab`` command, for installs where the script is not on PATH."""
import sys

from .cli import main

sys.exit(main())
