"""The command line, ``phobbit`` and ``python -m phobbit``: its grammar (``parser``),
the commands (``commands``), their terminal views (``terminal``, rich) and the model
files that ``train`` imports (``model_file``).

A thin layer over the library API (``phobbit.api``); it may import every other
layer, and nothing imports it. A user's mistake ends as one line on stderr with
exit code 2, never a traceback.
"""

from __future__ import annotations

from phobbit.cli.commands import main

__all__ = ["main"]
