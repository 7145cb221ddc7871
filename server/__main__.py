"""``python -m server`` is ``fleetserve``."""

import sys

from server.cli import main

sys.exit(main())
