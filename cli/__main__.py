"""Allow ``python -m cli`` as an alias of the ``maskid`` command."""

import sys

from cli.main import main

sys.exit(main())
