"""Allow ``python -m bot`` as an alias of ``maskid bot``; global options such as ``-v`` may follow."""

import sys

from cli.main import main

sys.exit(main([*sys.argv[1:], "bot"]))
