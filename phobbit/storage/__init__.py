"""The repository folder: everything a tuning run keeps on disk, and how it is read back.

CRC-framed rows and their one reader (``framing``), the one way a repository file is
opened: inside the folder, regular, bounded (``files``), the driver's lease and the
fencing token that keeps a dead driver's processes from writing (``lease``,
``fence``), ``results.csv`` and ``run.json`` (``repository``), checkpoints and
their best-epoch copies (``checkpoints``), the decisions ASHA and TPE record
before they train (``decisions``), the rows a run cannot have written, skipped with a
warning (``sifting``), the results table (``results``) and the
read-only view that ``status``, ``best`` and ``export`` use (``view``). Every
write is an append under one file lock, or a write to a temporary file then
``os.replace``. It imports ``phobbit.core`` and ``phobbit.errors`` only: nothing
of execution or any layer above it (the worker's state hands its fences down,
``fence.serve``), no Keras or training framework, and no module here imports
another in a cycle.
"""
