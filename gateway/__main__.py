"""`python -m gateway` is `casino-gateway`."""

import sys

from gateway.cli import main

sys.exit(main())
