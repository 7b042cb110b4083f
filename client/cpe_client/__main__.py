"""`python -m cpe_client` = the `cpe-client` command."""

import sys

from cpe_client.cli import main

sys.exit(main())
