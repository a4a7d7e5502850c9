"""Where segments run: the driver loop, the executors and the worker processes.

The scheduler (``scheduler``) drives a ``phobbit.core.plan.Plan`` over an
``Executor`` (``executor``): the local pool of GPU-pinned processes
(``executor.LocalExecutor``), a Dask cluster (``dask``) or a virtual clock for
tests and benchmarks (``simulated``), chosen by ``resources.Resources`` with the
run's retries and segment timeout. A worker (``worker``) trains one segment of
a ``Trainable`` (``trainable``), keeps models warm between segments (``warm``) and
guards its standard output (``streams``). It imports ``phobbit.core`` and
``phobbit.storage``; the driver side never imports Keras or TensorFlow, which only
a worker's trainable loads.
"""
