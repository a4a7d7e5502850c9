"""Where segments run: the driver loop, the executors and the worker processes.

The scheduler (``scheduler``) drives a ``phobbit.core.plan.Plan`` over an
``Executor`` (``executor``): the local pool of GPU-pinned processes
(``executor.LocalExecutor``), a Dask cluster (``dask``) or a virtual clock for
tests and benchmarks (``simulated``), chosen by ``resources.Resources`` with the
run's retries and segment timeout. A worker (``worker``) trains one segment of
a ``Trainable`` (``trainable``), keeps models warm between segments (``warm``) and
guards its standard output (``streams``); what a worker process holds between
segments (its slot, warm models, fences, datasets) is one object
(``worker_state``). It imports ``phobbit.core``, ``phobbit.storage`` and
``phobbit.errors``, never the Keras adapter, reporting, the API or the CLI, and no
training framework: only a worker's trainable loads Keras.
"""
