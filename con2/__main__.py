"""``python -m con2``: the ``con2`` command line."""

import sys

from con2.cli import main

sys.exit(main())
