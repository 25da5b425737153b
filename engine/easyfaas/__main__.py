"""``python -m easyfaas``: the same as the ``easyfaas`` command."""

import sys

from .cli import main

sys.exit(main())
