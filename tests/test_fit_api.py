"""What build_dataset and prepare hand to a user trains when passed to model.fit the obvious way."""

import numpy as np
import pytest

import paradl_tf as pdl
from paradl_tf.config import load_config

SMALL = ["train.epochs=2", "train.verbose=0", "model.hidden=[16]"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("overrides", [
    ["strategy.kind=default"],
    ["strategy.kind=one_device"],
    ["strategy.kind=mirrored", "strategy.devices=4", "keras=keras3"],
    ["strategy.kind=one_device", "keras=tf_keras"],
    ["strategy.kind=model_parallel", "strategy.placement.kind=auto", "strategy.placement.devices=2"],
], ids=["default", "one_device", "mirrored4-keras3", "one_device-tf_keras", "model_parallel2"])
def test_the_obvious_fit_call_trains_epochs_of_steps_per_epoch(overrides):
    job = pdl.prepare(load_config(None, [*SMALL, "devices.count=4", *overrides]))
    data = job.datasets
    history = job.model.fit(data.train, validation_data=data.validation, epochs=2, verbose=0)
    loss = history.history["loss"]
    assert len(loss) == 2 and loss[1] < loss[0] and history.history["val_accuracy"][-1] > 0.3  # chance: 0.1
    assert int(job.model.optimizer.iterations.numpy()) == 2 * data.steps_per_epoch


@pytest.mark.timeout(240)
def test_tf_keras_refuses_the_obvious_call_on_a_distributed_dataset_and_fit_kwargs_train():
    """tf_keras wants step counts for a distributed dataset and says so; fit_kwargs carries them."""
    job = pdl.prepare(load_config(None, [*SMALL, "devices.count=4", "strategy.kind=mirrored", "strategy.devices=2",
                                         "keras=tf_keras"]))
    with pytest.raises(ValueError, match="When providing a distributed dataset, you must specify the number of steps"):
        job.model.fit(job.datasets.train, validation_data=job.datasets.validation, epochs=2, verbose=0)
    history = job.model.fit(**job.datasets.fit_kwargs(job.keras_name), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(job.model.optimizer.iterations.numpy()) == 2 * job.datasets.steps_per_epoch


def test_each_epoch_of_the_view_is_a_new_pass_of_every_example_once():
    cfg = load_config(None, ["devices.count=4", "strategy.kind=mirrored", "strategy.devices=4"])
    strategy = pdl.build_strategy(cfg)
    data = pdl.build_dataset(cfg, strategy=strategy)
    epochs = []
    for _ in range(2):
        labels_seen = []
        for _, y in data.train:
            labels_seen.append(np.concatenate([v.numpy() for v in strategy.experimental_local_results(y)]))
        epochs.append(np.concatenate(labels_seen))
    assert [len(e) for e in epochs] == [data.steps_per_epoch * cfg.train.global_batch_size] * 2
    assert not np.array_equal(epochs[0], epochs[1])  # a new permutation each epoch


def test_fit_kwargs_give_the_endless_stream_its_step_counts():
    cfg = load_config(None, ["strategy.kind=one_device"])
    data = pdl.build_dataset(cfg)
    kwargs = data.fit_kwargs("keras3")
    assert kwargs["x"] is data.train_stream and kwargs["steps_per_epoch"] == data.steps_per_epoch
    assert kwargs["validation_steps"] is None and data.fit_kwargs("tf_keras")["validation_steps"] == data.validation_steps
    assert data.train.cardinality().numpy() == data.steps_per_epoch
    # Declared infinite, not unknown: MultiWorkerMirrored reads an unknown one with an all-reduce more per step.
    assert data.train_stream.cardinality().numpy() == -1  # tf.data.INFINITE_CARDINALITY
