"""Model and data builders, for Keras 3 and tf_keras."""

import numpy as np
import pytest
import tensorflow as tf

from paradl_tf import ConfigError, build_dataset, build_model, import_keras, load_config, load_splits


@pytest.mark.parametrize("keras_name", ["keras3", "tf_keras"])
@pytest.mark.parametrize("model,data,params", [
    ("mlp", "digits", 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10),
    ("cnn", "digits", None),
    ("inception", "digits", None),
    ("user", "synthetic_tabular", None),
])
def test_models_build_and_predict(keras_name, model, data, params):
    overrides = [f"model.kind={model}", f"data.kind={data}"]
    if model == "user":
        overrides += ["model.fn=paradl_tf.examples:residual_mlp", "model.args={width: 16}"]
    cfg = load_config(None, overrides)
    splits = load_splits(cfg.data, seed=0)
    keras = import_keras(keras_name)
    net = build_model(cfg.model, splits.input_shape, splits.num_classes, keras)
    assert isinstance(net, keras.Model)
    out = net(splits.x_train[:5])
    assert tuple(out.shape) == (5, splits.num_classes)
    if params is not None:
        assert net.count_params() == params


def test_inception_has_four_parallel_branches_per_block():
    keras = import_keras("keras3")
    cfg = load_config(None, ["model.kind=inception", "model.blocks=2"])
    net = build_model(cfg.model, (8, 8, 1), 10, keras)
    for b in range(2):
        concat = net.get_layer(f"block{b}_concat")
        assert len(concat.input) == 4
    names = {layer.name for layer in net.layers}
    assert {"block0_b1_1x1", "block0_b2_3x3", "block0_b3_5x5", "block0_b4_1x1"} <= names


def test_image_model_on_tabular_data_is_an_error():
    cfg = load_config(None, ["model.kind=cnn", "data.kind=synthetic_tabular"])
    with pytest.raises(ConfigError, match=r"model\.kind: cnn needs image data \(height, width, channels\), but the data has shape \(64,\)"):
        build_model(cfg.model, (64,), 10, import_keras("keras3"))


def test_user_model_must_return_a_keras_model():
    cfg = load_config(None, ["model.kind=user", "model.fn=user_code:not_a_model"])
    with pytest.raises(ConfigError, match=r"model\.fn: user_code:not_a_model must return a keras\.Model; got str"):
        build_model(cfg.model, (64,), 10, import_keras("keras3"))


@pytest.mark.parametrize("fn,message", [
    ("no_such_pkg.mod:fn", r"model\.fn: cannot import module 'no_such_pkg\.mod'"),
    ("paradl_tf.examples:nothing", r"model\.fn: module 'paradl_tf\.examples' has no callable 'nothing'"),
])
def test_user_model_import_errors(fn, message):
    cfg = load_config(None, ["model.kind=user", f"model.fn={fn}"])
    with pytest.raises(ConfigError, match=message):
        build_model(cfg.model, (64,), 10, import_keras("keras3"))


def test_digits_are_real_and_stratified():
    cfg = load_config(None, ["data.validation_split=0.2"])
    s = load_splits(cfg.data, seed=0)
    assert s.x_train.shape == (1437, 8, 8, 1) and s.x_val.shape == (360, 8, 8, 1)
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
    assert np.bincount(s.y_val).min() >= 35  # every class in validation


@pytest.mark.parametrize("kind", ["synthetic_images", "synthetic_tabular"])
def test_synthetic_data_is_deterministic_from_the_seed(kind):
    cfg = load_config(None, [f"data.kind={kind}", "data.train_examples=64", "data.validation_examples=16", "data.num_classes=3"])
    a, b, c = (load_splits(cfg.data, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.num_classes == 3 and set(np.unique(a.y_train)) <= {0, 1, 2}


def test_user_data_function():
    cfg = load_config(None, ["data.kind=user", "data.fn=paradl_tf.examples:two_moons", "data.args={examples: 100}"])
    s = load_splits(cfg.data, seed=0)
    assert s.x_train.shape == (80, 2) and s.num_classes == 2


def test_user_data_must_return_two_splits():
    cfg = load_config(None, ["data.kind=user", "data.fn=user_code:one_split"])
    with pytest.raises(ConfigError, match=r"data\.fn: user_code:one_split must return \(\(x_train, y_train\), \(x_val, y_val\)\)"):
        load_splits(cfg.data, seed=0)


def test_pipeline_batches_are_global_and_equal():
    cfg = load_config(None, ["train.global_batch_size=100"])
    ds = build_dataset(cfg)
    sizes = [int(x.shape[0]) for x, _ in ds.train_stream.take(2 * 14)]  # repeats: one pass is one epoch
    assert sizes == [100] * 28 and ds.steps_per_epoch == 14
    assert ds.validation_steps == 4  # 360 validation examples
    assert ds.train.element_spec[0].dtype == tf.float32


def test_batch_larger_than_data_is_an_error():
    cfg = load_config(None, ["data.kind=user", "data.fn=paradl_tf.examples:two_moons", "data.args={examples: 50}",
                             "train.global_batch_size=64"])
    with pytest.raises(ConfigError, match=r"train\.global_batch_size is larger than the 40 training examples"):
        build_dataset(cfg)


def test_replicas_see_exactly_the_examples_one_device_sees():
    from paradl_tf import build_strategy

    cfg = load_config(None, ["devices.count=4", "strategy.kind=mirrored", "train.global_batch_size=64", "train.seed=7"])
    strategy = build_strategy(cfg)
    single = build_dataset(cfg)
    dist = build_dataset(cfg, strategy=strategy)
    assert isinstance(single.train, tf.data.Dataset) and isinstance(dist.train, tf.distribute.DistributedDataset)
    for (x, _), (xd, _) in zip(single.train.take(3), dist.train):
        parts = strategy.experimental_local_results(xd)
        assert [int(p.shape[0]) for p in parts] == [16] * 4
        rows = lambda t: sorted(map(tuple, t.numpy().reshape(len(t), -1).round(4).tolist()))  # noqa: E731
        assert rows(tf.concat(parts, 0)) == rows(x)


def test_pipelines_run_without_autotuning():
    # tf.data's autotuning thread can stall an iterator's destructor for seconds (see data._pipeline).
    ds = build_dataset(load_config())
    assert ds.train.options().autotune.enabled is False
    assert ds.validation.options().autotune.enabled is False
