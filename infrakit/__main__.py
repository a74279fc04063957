"""``python -m infrakit``: the ``infrakit`` command."""

import sys

from infrakit.cli import main

sys.exit(main())
