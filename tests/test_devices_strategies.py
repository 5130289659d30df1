"""Virtual devices, the strategy registry and the Keras-version rules, on 4 logical CPUs."""

import pytest
import tensorflow as tf

import paradl_tf
from paradl_tf import ConfigError, DeviceSetupError, build_strategy, load_config
from paradl_tf.builders.keras_version import import_keras, resolve_keras
from paradl_tf.builders.strategies import check_global_batch


def test_virtual_devices_exist_and_repeat_setup_is_a_noop():
    names = paradl_tf.setup_virtual_devices(4)
    assert names == [f"/device:CPU:{i}" for i in range(4)]
    assert len(tf.config.list_logical_devices("CPU")) == 4


def test_changing_the_layout_after_start_says_how_to_fix_it():
    with pytest.raises(DeviceSetupError, match=r"cannot create 2 logical CPU devices: the TensorFlow runtime is "
                       r"already initialized with 4 logical CPU device\(s\)\. Call paradl_tf\.setup_virtual_devices\(\) "
                       r"before .*in a notebook, restart the kernel"):
        paradl_tf.setup_virtual_devices(2)


def test_asking_for_one_device_after_four_started_is_an_error():
    with pytest.raises(DeviceSetupError, match=r"cannot create 1 logical CPU devices"):
        paradl_tf.setup_virtual_devices(1)


def test_no_gpu_is_a_clear_error():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceSetupError, match="devices.type is GPU but TensorFlow sees no GPU"):
        paradl_tf.setup_virtual_devices(1, "GPU")


def test_zero_devices_is_an_error():
    with pytest.raises(DeviceSetupError, match="at least 1. Received: n=0"):
        paradl_tf.setup_virtual_devices(0)


@pytest.mark.parametrize("overrides,cls,replicas", [
    (["strategy.kind=default"], "_DefaultDistributionStrategy", 1),
    (["strategy.kind=one_device"], "OneDeviceStrategy", 1),
    (["strategy.kind=one_device", "strategy.device=/cpu:3"], "OneDeviceStrategy", 1),
    (["strategy.kind=mirrored"], "MirroredStrategy", 4),
    (["strategy.kind=mirrored", "strategy.devices=2"], "MirroredStrategy", 2),
    (["strategy.kind=mirrored", "strategy.devices=[/cpu:1, /cpu:3]"], "MirroredStrategy", 2),
    (["strategy.kind=mirrored", "strategy.cross_device_ops=hierarchical_copy"], "MirroredStrategy", 4),
    (["strategy.kind=mirrored", "strategy.cross_device_ops=reduction_to_one_device"], "MirroredStrategy", 4),
])
def test_strategy_registry(overrides, cls, replicas):
    cfg = load_config(None, ["devices.count=4", *overrides])
    strategy = build_strategy(cfg)
    assert type(strategy).__name__ == cls
    assert strategy.num_replicas_in_sync == replicas


def test_mirrored_uses_the_named_devices():
    cfg = load_config(None, ["devices.count=4", "strategy.kind=mirrored", "strategy.devices=[/cpu:1, /cpu:3]"])
    devices = build_strategy(cfg).extended.worker_devices
    assert [tf.DeviceSpec.from_string(d).device_index for d in devices] == [1, 3]


def test_unknown_device_name_is_an_error():
    cfg = load_config(None, ["devices.count=4", "strategy.kind=mirrored", "strategy.devices=[/cpu:0, /cpu:9]"])
    with pytest.raises(ConfigError, match=r"strategy\.devices\[1\]: device '/cpu:9' does not exist; logical devices: /device:CPU:0"):
        build_strategy(cfg)


def test_more_devices_than_exist_at_build_time():
    # devices.count says 8 (statically fine) but this process made 4.
    cfg = load_config(None, ["devices.count=8", "strategy.kind=mirrored", "strategy.devices=8"])
    with pytest.raises(ConfigError, match=r"strategy\.devices asks for 8 CPU devices but 4 exist"):
        build_strategy(cfg)


def test_global_batch_must_divide_across_replicas():
    cfg = load_config(None, ["devices.count=4", "strategy.kind=mirrored"])
    strategy = build_strategy(cfg)
    assert check_global_batch(64, strategy) == 16
    with pytest.raises(ConfigError, match=r"train\.global_batch_size must be divisible by the 4 replicas of the "
                       r"strategy\. Received: train\.global_batch_size=30"):
        check_global_batch(30, strategy)


@pytest.mark.parametrize("choice,kind,replicas,spe,expected", [
    ("auto", "default", 1, 1, "keras3"),
    ("auto", "mirrored", 4, 1, "keras3"),
    ("auto", "mirrored", 1, 8, "keras3"),
    ("auto", "mirrored", 2, 4, "tf_keras"),
    ("tf_keras", "mirrored", 4, 1, "tf_keras"),
    ("keras3", "one_device", 1, 8, "keras3"),
])
def test_keras_resolution(choice, kind, replicas, spe, expected):
    assert resolve_keras(choice, kind, replicas, spe) == expected


def test_explicit_keras3_that_cannot_work_says_why():
    with pytest.raises(ConfigError, match=r"keras: keras3 cannot run this: Keras 3 crashes under a multi-replica "
                       r"MirroredStrategy with steps_per_execution > 1 \(keras-team/keras#19246\); use keras: auto or tf_keras"):
        resolve_keras("keras3", "mirrored", 2, 4)


def test_import_keras():
    assert import_keras("keras3").__name__ == "keras"
    assert import_keras("tf_keras").__name__ == "tf_keras"


@pytest.mark.parametrize("kind", ["parameter_server", "multi_worker_mirrored"])
def test_cluster_strategies_need_a_cluster(kind):
    cfg = load_config(None, [f"strategy.kind={kind}", "train.steps_per_epoch=10"])
    with pytest.raises(ConfigError, match=rf"strategy\.kind: {kind} needs its cluster: train with paradl_tf\.train\(cfg\)"):
        build_strategy(cfg)
