"""``python -m kp2d …`` (also what ``torchrun -m kp2d train …`` runs)."""

import sys

from kp2d.cli import main

sys.exit(main())
