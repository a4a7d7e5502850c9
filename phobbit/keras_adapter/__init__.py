"""Keras on the worker side: the trainable that builds, fits, checkpoints and seeds a
Keras model (``trainable``), and the choice of Keras backend (``backends``).

The only layer that imports Keras or TensorFlow, and only inside workers (or when
a user asks for a model in their own process). It imports ``phobbit.core``,
``phobbit.storage`` and ``phobbit.execution`` (the ``Trainable`` interface, the
worker's state). The driver imports only its modules that import no Keras at
module level (``backends``, and ``fit`` and ``data`` where they exist). Named so
that it does not shadow the ``keras`` package.
"""
