"""What a run tells people while and after it runs: the pure progress state the
terminal's views draw (``progress``), plain progress lines (``plain``),
TensorBoard logs (``tensorboard``) and plots (``plot``).

Reporters implement the scheduler's ``Reporter`` protocol. This layer imports
``phobbit.core``, ``phobbit.storage`` and ``phobbit.execution``, and the optional
``tensorboard`` and ``matplotlib`` packages only where they are used; never Keras,
the Keras adapter's worker-side modules, the API or the CLI.
"""
