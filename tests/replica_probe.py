"""Trains one Keras segment in a fresh process split into logical CPU devices, for
``tests/keras_adapter/test_replicas.py``: ``python replica_probe.py DEVICES CHECKPOINT
START END OUT``.

The split must happen before TensorFlow initialises, which is why this runs in a
process of its own. It writes to OUT (JSON) the replicas the model trained on, the
segment's val losses and a digest of the weights and optimizer state it ended with.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(devices: int, checkpoint: str, start: int, end: int, out: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if devices > 1:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    import keras
    from keras_models import DROPOUT, small_digits

    from phobbit.keras_adapter.trainable import KerasTrainable, replica_strategy

    def dense(hparams: dict) -> keras.Model:
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(hparams["learning_rate"]),
            loss="sparse_categorical_crossentropy",
        )
        strategy = tf.distribute.get_strategy()  # the one its variables were made under
        built.append(strategy.num_replicas_in_sync)
        return model

    built: list[int] = []
    trainable = KerasTrainable(dense, load_dataset=small_digits, warm_bytes=0, batch_size=64)
    losses = trainable.train(DROPOUT, checkpoint, start, end)
    model = keras.saving.load_model(checkpoint + ".keras", compile=True, safe_mode=True)
    digest = hashlib.sha256()
    for variable in list(model.weights) + list(model.optimizer.variables):
        digest.update(variable.numpy().tobytes())
    strategy = replica_strategy()
    record = {
        "replicas": 1 if strategy is None else strategy.num_replicas_in_sync,
        "built_under": built,
        "losses": [float(v) for v in losses],
        "digest": digest.hexdigest(),
    }
    Path(out).write_text(json.dumps(record))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
