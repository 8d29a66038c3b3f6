"""`python -m deepmetric.cli …` = `deepmetric …`."""

import sys

from deepmetric.cli import main

sys.exit(main())
