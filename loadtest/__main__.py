"""``python -m loadtest ...`` is ``fleetserve loadtest ...`` (``python -m loadtest bench|bench-scheduling|plan`` also work)."""

import sys

from loadtest.cli import main

if __name__ == "__main__":  # spawned load-generator processes import this module without running it
    sys.exit(main(sys.argv[1:]))
