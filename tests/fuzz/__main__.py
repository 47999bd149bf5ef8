"""``python -m tests.fuzz --seconds 600 [--target NAME]``: see tests/fuzz/campaign.py."""

import sys

from tests.fuzz.campaign import main

sys.exit(main())
