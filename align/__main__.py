"""`python -m align ...` runs the `align` command, so `accelerate launch [flags] -m align train CONFIG` starts one
training process per device."""

import sys

from align.cli import main

sys.exit(main())
