"""`python -m tbps` runs the command line."""

import sys

from tbps.cli import main

sys.exit(main())
