"""``python -m include.model_ci check ...``, the same as ``mlops-ci``."""

import sys

from include.model_ci.cli import main

if __name__ == "__main__":
    sys.exit(main())
