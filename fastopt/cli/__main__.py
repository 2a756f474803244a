"""``python -m fastopt.cli``: the ``fastopt`` command."""

import sys

from . import main

sys.exit(main())
