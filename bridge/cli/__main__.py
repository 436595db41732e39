"""``python -m bridge.cli``: the ``qcd-bridge`` command."""

import sys

from . import main

sys.exit(main())
