"""tf.distribute strategies from the `strategy` config section, one builder per kind."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from paradl_tf.config import Config, DevicesConfig
from paradl_tf.devices import logical_device_names
from paradl_tf.errors import ConfigError

StrategyBuilder = Callable[..., tf.distribute.Strategy]
_BUILDERS: dict[str, StrategyBuilder] = {}


def register_strategy(kind: str) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Register `fn(strategy_cfg, devices_cfg) -> tf.distribute.Strategy` for `strategy.kind: <kind>`."""

    def wrap(fn: StrategyBuilder) -> StrategyBuilder:
        _BUILDERS[kind] = fn
        return fn

    return wrap


def build_strategy(cfg: Config) -> tf.distribute.Strategy:
    """The tf.distribute.Strategy that `cfg.strategy` describes, over the logical devices of `cfg.devices`."""
    kind = cfg.strategy.kind
    if kind not in _BUILDERS:
        raise ConfigError(f"strategy.kind: unknown strategy kind {kind!r}; choose one of: {', '.join(_BUILDERS)}")
    return _BUILDERS[kind](cfg.strategy, cfg.devices)


def check_global_batch(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The per-replica batch; the global batch must split evenly across replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ConfigError(
            f"train.global_batch_size must be divisible by the {replicas} replicas of the strategy. "
            f"Received: train.global_batch_size={global_batch_size}"
        )
    return global_batch_size // replicas


@register_strategy("default")
def _default(strategy_cfg, devices_cfg: DevicesConfig) -> tf.distribute.Strategy:
    return tf.distribute.get_strategy()


@register_strategy("one_device")
def _one_device(strategy_cfg, devices_cfg: DevicesConfig) -> tf.distribute.Strategy:
    device = strategy_cfg.device or _select_devices(None, devices_cfg)[0]
    _check_exists([device], devices_cfg)
    return tf.distribute.OneDeviceStrategy(device)


@register_strategy("mirrored")
def _mirrored(strategy_cfg, devices_cfg: DevicesConfig) -> tf.distribute.Strategy:
    devices = _select_devices(strategy_cfg.devices, devices_cfg)
    _check_exists(devices, devices_cfg)
    _new_collective_key_base(tf.distribute.MirroredStrategy)
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=_cross_device_ops(strategy_cfg.cross_device_ops))


def _new_collective_key_base(strategy_class: type) -> None:
    """Give the next strategy its own collective group keys.

    Every MirroredStrategy numbers its collective groups from 1, so a second one over
    another device set in the same process (a notebook comparing 2 and 4 replicas) joins
    group 1 with the wrong size and aborts: "Device ... is joining a group with size4, but
    that group has size 2 (group_key=1)". TensorFlow's own tests offset the class's key
    base before each strategy (tensorflow/python/distribute/strategy_combinations.py);
    there is no public API for it, so do the same where the attribute exists.
    """
    if hasattr(strategy_class, "_collective_key_base"):
        strategy_class._collective_key_base += 100_000


def _cross_device_ops(name: str) -> tf.distribute.CrossDeviceOps | None:
    if name == "auto":
        return None  # TensorFlow picks: NCCL between GPUs, reduction to one device on CPUs
    if name == "nccl":
        return tf.distribute.NcclAllReduce()
    if name == "hierarchical_copy":
        return tf.distribute.HierarchicalCopyAllReduce()
    if name == "reduction_to_one_device":
        return tf.distribute.ReductionToOneDevice()
    raise ConfigError(f"strategy.cross_device_ops: unknown {name!r}")


def _select_devices(wanted: int | list[str] | None, devices_cfg: DevicesConfig) -> list[str]:
    available = logical_device_names(devices_cfg.type)
    if wanted is None:
        return available
    if isinstance(wanted, int):
        if wanted > len(available):
            raise ConfigError(
                f"strategy.devices asks for {wanted} {devices_cfg.type} devices but {len(available)} exist. "
                f"Received: strategy.devices={wanted}"
            )
        return available[:wanted]
    return list(wanted)


def _check_exists(devices: list[str], devices_cfg: DevicesConfig) -> None:
    known = {d.name.lower() for d in tf.config.list_logical_devices()}
    known |= {n.lower() for n in logical_device_names("CPU") + logical_device_names("GPU")}
    for device in devices:
        spec = tf.DeviceSpec.from_string(device)
        short = f"/device:{(spec.device_type or '').upper()}:{spec.device_index}".lower()
        if short not in known and device.lower() not in known:
            raise ConfigError(
                f"strategy: device {device!r} does not exist; logical devices: "
                f"{', '.join(logical_device_names(devices_cfg.type))}"
            )
