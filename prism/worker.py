"""Kept for runbooks and images that still call ``python -m prism.worker``: see :mod:`prism.cloud.worker`."""

import sys

from prism.cloud.worker import main

if __name__ == "__main__":
    sys.exit(main())
