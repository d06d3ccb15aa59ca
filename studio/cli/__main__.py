"""``python -m studio.cli``: the same as the ``rcdm-studio`` console script."""

from studio.cli import main

raise SystemExit(main())
