"""`python -m backend` runs the `layerdiffuse` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
