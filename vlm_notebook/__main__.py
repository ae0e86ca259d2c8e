"""``python -m vlm_notebook``: see vlm_notebook.cli."""

import sys

from .cli import main

sys.exit(main())
