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
    "ParadlError": "errors", "ConfigError": "errors", "DeviceSetupError": "errors",
    "setup_virtual_devices": "devices", "setup_devices": "devices", "logical_device_names": "devices",
    "resolve_keras": "keras_version", "import_keras": "keras_version",
    "build_strategy": "strategies", "register_strategy": "strategies",
    "build_dataset": "data", "load_splits": "data",
    "build_model": "models", "compile_model": "models",
    "prepare": "training", "train": "training",
    "plan": "planning", "format_plan": "planning", "variable_devices": "planning",
    "format_placement": "planning",
    "training_step_ops": "model_parallel", "variable_bytes_by_device": "model_parallel",
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
