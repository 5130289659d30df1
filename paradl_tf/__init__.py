"""paradl_tf: parallel deep learning with TensorFlow/Keras, one config choice per method.

    import paradl_tf as pdl
    cfg = pdl.load_config("configs/sync_mirrored.yaml", ["train.epochs=3"])
    pdl.setup_devices(cfg.devices)   # before anything touches TensorFlow devices
    results = pdl.train(cfg)

Names load lazily, so `import paradl_tf` and config validation do not start TensorFlow.
"""

import importlib

_EXPORTS = {
    "Config": "config", "load_config": "config", "dump_config": "config",
    "ParadlError": "errors", "ConfigError": "errors", "DeviceSetupError": "errors", "ClusterError": "errors",
    "setup_virtual_devices": "builders.devices", "setup_devices": "builders.devices",
    "logical_device_names": "builders.devices",
    "resolve_keras": "builders.keras_version", "import_keras": "builders.keras_version",
    "build_strategy": "builders.strategies", "register_strategy": "builders.strategies",
    "build_dataset": "builders.data", "load_splits": "builders.data", "load_source": "builders.data",
    "write_shards": "files.write",
    "build_model": "builders.models", "compile_model": "builders.models",
    "train": "api", "plan": "api", "prepare": "runs.fit",
    "format_plan": "runs.plan", "variable_devices": "runs.plan",
    "format_placement": "runs.plan", "format_mesh": "runs.plan",
    "training_step_ops": "model_parallel.placed", "variable_bytes_by_device": "model_parallel.placed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'paradl_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"paradl_tf.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
