"""``python -m helpers.survey generate|cache ...`` (see :mod:`helpers.survey.cli`)."""
import sys

from helpers.survey.cli import main

sys.exit(main())
