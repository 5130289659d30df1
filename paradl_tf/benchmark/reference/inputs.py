"""The input pipelines the references train from: the one a user writes, and the tutorials'."""

from __future__ import annotations

from types import ModuleType

import tensorflow as tf


def _hand_written_input(keras: ModuleType, strategy, x, y, train: dict):
    """The pipeline a user writes: shuffle, batch (drop_remainder), repeat for steps_per_epoch, prefetch; under
    ParameterServerStrategy each worker's own (a DatasetCreator)."""
    batch, seed = train["global_batch_size"], train.get("seed", 0)
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return keras.utils.experimental.DatasetCreator(_worker_dataset_fn(x, y, batch, seed))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    dataset = dataset.batch(batch, drop_remainder=True)
    if train.get("steps_per_epoch"):
        dataset = dataset.repeat()
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # in-memory arrays: no files to shard
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def _worker_dataset_fn(x, y, batch: int, seed: int):
    """Each worker's own endless pipeline (ParameterServerStrategy runs this function on every worker)."""

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = input_context.get_per_replica_batch_size(batch)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
        return dataset.batch(per_replica, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def _ps_tutorial_input(keras: ModuleType, strategy, x, y, train: dict):
    """The tutorial's dataset_fn, line for line (its data replaced by the workload's)."""
    global_batch_size = train["global_batch_size"]

    def dataset_fn(input_context):
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).repeat()
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        dataset = dataset.batch(batch_size)
        dataset = dataset.prefetch(2)
        return dataset

    return keras.utils.experimental.DatasetCreator(dataset_fn)


def _mwm_tutorial_input(keras: ModuleType, strategy, x, y, train: dict):
    """The tutorial's mnist_dataset (its data replaced by the workload's): AUTO sharding, as it leaves it."""
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).repeat().batch(train["global_batch_size"])


# The input pipeline each variant of a MultiWorkerMirrored worker builds.
_WORKER_INPUTS = {"reference": _hand_written_input, "tutorial": _mwm_tutorial_input}
