"""``python -m include.spec_draft draft ...``, the same as ``mlops-spec``."""

import sys

from include.spec_draft.cli import main

if __name__ == "__main__":
    sys.exit(main())
