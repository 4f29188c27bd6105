"""``python -m mhaexp.tools.bench``: see :mod:`mhaexp.tools.bench`."""

import sys

from mhaexp.tools.bench.harness import main

sys.exit(main())
