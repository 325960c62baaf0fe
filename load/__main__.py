"""``python -m load`` is ``tierkv-load``."""

from load.cli import main

raise SystemExit(main())
