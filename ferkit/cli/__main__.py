"""``python -m ferkit.cli ...`` (and ``torchrun -m ferkit.cli train ...``) run the ``ferkit`` command."""
import sys

from ferkit.cli import main

sys.exit(main())
