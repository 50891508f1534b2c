"""``python -m autocomp``: the ``autocomp`` command, for an environment whose scripts folder is not on the PATH."""

import sys

from autocomp.cli import main

sys.exit(main())
