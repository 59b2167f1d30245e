"""``python -m gpuclust``: the command line (the application's entry point)."""

import sys

from .app.cli import main

sys.exit(main())
