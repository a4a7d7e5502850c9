"""The pure core: what Hyperband decides, as functions and state machines of numbers.

Here live the value objects (``records``), the search space and its seeded sampling
(``space``, ``samplers``), the objective (``objective``), the budget (``budget``),
the bracket math (``schedule``), the reducer (``reducer``), the bracket state
machines of synchronous Hyperband and ASHA (``hyperband``, ``asha``), the order in
which free workers take segments (``dispatch``), the two put together (``plan``),
the search that picks algorithm and sampler and makes the plan (``search``), which
rows and decisions a run's schedule can have written (``provenance``), and
the one grammar of the small values a user types: durations, byte sizes, integers
(``units``). Nothing here does I/O, starts a process, reads a clock or imports a
training framework; it imports only ``phobbit.errors`` and itself, so every
decision can be tested exhaustively and replayed exactly.
"""
