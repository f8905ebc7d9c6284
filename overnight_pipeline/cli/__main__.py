"""`python -m overnight_pipeline.cli`: the `overnight` command."""

import sys

from overnight_pipeline.cli import main

sys.exit(main())
