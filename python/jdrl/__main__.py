"""`python -m jdrl ...`: the `jdrl` command, for an environment whose scripts folder is not on PATH."""

import sys

from jdrl.cli import main

sys.exit(main())
