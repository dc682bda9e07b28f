"""`python -m vlmnode` runs the `vlmnode` command."""

import sys

from vlmnode.cli import main

sys.exit(main())
