"""``python -m slowfast_vgen ...`` is ``sfvgen ...``."""

import sys

from .cli import main

sys.exit(main())
