"""``python -m edgekit_agent`` runs the ``edgekit-agent`` command line."""

import sys

from edgekit_agent.cli import main

sys.exit(main())
