"""``python -m phobbit``: the command line of ``phobbit.cli``."""

from __future__ import annotations

from phobbit.cli import main

raise SystemExit(main())
