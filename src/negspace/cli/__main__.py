"""``python -m negspace.cli``."""

import sys

from negspace.cli import main

sys.exit(main())
