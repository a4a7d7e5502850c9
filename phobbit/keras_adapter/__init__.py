"""Keras: what trains (``fit``: ``KerasFit``, checked on the driver), its data (``data``:
checks, staging, the per-epoch pipeline), the choice of backend (``backends``), and,
worker side, the trainable that builds, fits and checkpoints a model (``trainable``)
with its checkpoints (``saving``) and per-epoch seeds (``seeding``), and a Keras Tuner
hypermodel's build and tunable fit as a model function (``hypermodel``).

The only layer that imports Keras or TensorFlow, and only inside workers (or when
a user asks for a model in their own process): ``fit``, ``data``, ``backends``,
``saving`` and ``hypermodel`` import neither at module level, and they are all the
driver imports of this package (``saving.load_model`` imports Keras when ``best_model`` asks for a
model). It imports ``phobbit.core``, ``phobbit.storage`` and ``phobbit.execution``'s
``Trainable`` interface and worker state. Named so that it does not shadow the
``keras`` package.
"""
