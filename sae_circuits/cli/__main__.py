"""``python -m sae_circuits.cli``: the ``sae-circuits`` command."""

import sys

from sae_circuits.cli import main

sys.exit(main())
