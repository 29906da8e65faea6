"""`python -m jdrl ...`: the `jdrl` command, for an environment whose scripts folder is not on PATH."""

import sys

from jdrl.cli import main

if __name__ == "__main__":
    sys.exit(main())
