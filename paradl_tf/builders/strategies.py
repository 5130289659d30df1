"""tf.distribute strategies from the `strategy` config section, one builder per kind."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import tensorflow as tf

from paradl_tf.config import Config, DevicesConfig
from paradl_tf.builders.devices import select_devices
from paradl_tf.errors import ConfigError

StrategyBuilder = Callable[..., tf.distribute.Strategy]
_BUILDERS: dict[str, StrategyBuilder] = {}


def register_strategy(kind: str) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Register `fn(strategy_cfg, devices_cfg) -> tf.distribute.Strategy` for `strategy.kind: <kind>`."""

    def wrap(fn: StrategyBuilder) -> StrategyBuilder:
        _BUILDERS[kind] = fn
        return fn

    return wrap


def build_strategy(cfg: Config, cluster_resolver=None) -> tf.distribute.Strategy:
    """The tf.distribute.Strategy that `cfg.strategy` describes, over the logical devices of `cfg.devices`.

    Multi-process strategies (parameter_server) also take the TensorFlow ClusterResolver of their cluster."""
    kind = cfg.strategy.kind
    if kind not in _BUILDERS:
        raise ConfigError(f"strategy.kind: unknown strategy kind {kind!r}; choose one of: {', '.join(_BUILDERS)}")
    if cluster_resolver is not None:
        return _BUILDERS[kind](cfg.strategy, cfg.devices, cluster_resolver=cluster_resolver)
    return _BUILDERS[kind](cfg.strategy, cfg.devices)


def check_global_batch(global_batch_size: int, strategy: tf.distribute.Strategy | int) -> int:
    """The per-replica batch; the global batch must split evenly across the strategy's replicas (or this many)."""
    replicas = strategy if isinstance(strategy, int) else strategy.num_replicas_in_sync
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
    device = select_devices([strategy_cfg.device] if strategy_cfg.device else None, devices_cfg.type, "strategy.device")[0]
    return tf.distribute.OneDeviceStrategy(device)


@register_strategy("mirrored")
def _mirrored(strategy_cfg, devices_cfg: DevicesConfig) -> tf.distribute.Strategy:
    devices = select_devices(strategy_cfg.devices, devices_cfg.type, "strategy.devices")
    _new_collective_key_base(tf.distribute.MirroredStrategy)
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=_cross_device_ops(strategy_cfg.cross_device_ops))


@register_strategy("model_parallel")
def _model_parallel(strategy_cfg, devices_cfg: DevicesConfig) -> tf.distribute.Strategy:
    # One replica: the model itself is split, each layer pinned with tf.device (paradl_tf.model_parallel.placed).
    return tf.distribute.get_strategy()


@register_strategy("hybrid")
def _hybrid(strategy_cfg, devices_cfg: DevicesConfig) -> tf.distribute.Strategy:
    # The replica groups are placed copies of the model inside one Keras model (paradl_tf.model_parallel.hybrid);
    # their gradients meet through a CrossDeviceOps (hybrid_cross_device_ops), not a strategy's replicas.
    return tf.distribute.get_strategy()


def hybrid_cross_device_ops(name: str, devices_type: str) -> tf.distribute.CrossDeviceOps:
    """The reduction of each stage's gradients across replica groups: auto is NCCL between GPUs, else one device."""
    if name == "auto":
        return tf.distribute.NcclAllReduce() if devices_type == "GPU" else tf.distribute.ReductionToOneDevice()
    return _cross_device_ops(name)


@register_strategy("parameter_server")
def _parameter_server(strategy_cfg, devices_cfg: DevicesConfig, cluster_resolver=None) -> tf.distribute.Strategy:
    _require_cluster("parameter_server", cluster_resolver)
    num_ps = len(cluster_resolver.cluster_spec().as_dict().get("ps", []))
    partitioner = variable_partitioner(strategy_cfg.variable_partitioner, num_ps)
    return tf.distribute.experimental.ParameterServerStrategy(cluster_resolver, variable_partitioner=partitioner)


@register_strategy("multi_worker_mirrored")
def _multi_worker_mirrored(strategy_cfg, devices_cfg: DevicesConfig, cluster_resolver=None) -> tf.distribute.Strategy:
    _require_cluster("multi_worker_mirrored", cluster_resolver)
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[strategy_cfg.communication]
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation,
                                                              timeout_seconds=strategy_cfg.collective_timeout_s)
    cpus = devices_cfg.count if devices_cfg.type == "CPU" else 1
    with _logical_cpu_replicas(cpus):
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver,
                                                         communication_options=options)


def variable_partitioner(partitioner_cfg, num_ps: int):
    """TensorFlow's variable partitioner for `strategy.variable_partitioner` (None: no sharding)."""
    partitioners = tf.distribute.experimental.partitioners
    kind = partitioner_cfg.kind
    if kind == "none":
        return None
    if kind == "min_size":
        return partitioners.MinSizePartitioner(partitioner_cfg.min_shard_bytes, partitioner_cfg.max_shards or num_ps)
    if kind == "max_size":
        return partitioners.MaxSizePartitioner(partitioner_cfg.max_shard_bytes, partitioner_cfg.max_shards)
    if kind == "fixed":
        return partitioners.FixedShardsPartitioner(partitioner_cfg.shards)
    raise ConfigError(f"strategy.variable_partitioner.kind: unknown {kind!r}; choose one of: none, min_size, max_size, fixed")


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


@contextlib.contextmanager
def _logical_cpu_replicas(n: int) -> Iterator[None]:
    """While a MultiWorkerMirroredStrategy is built, make each worker without GPUs one replica per logical CPU.

    TensorFlow makes one replica of a worker's CPU whatever its logical CPUs
    (CollectiveAllReduceExtended._initialize_local_devices hard-codes 1), yet its collectives run
    between logical CPUs as under MirroredStrategy. Taking the first `n` logical CPUs lets 2
    processes x 2 logical CPUs rehearse 2 hosts x 2 GPUs: 4 replicas, with a local and a cross-worker
    level of all-reduce. No public API does this; the method is swapped for the construction only.
    """
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective

    extended = collective.CollectiveAllReduceExtended
    original = getattr(extended, "_initialize_local_devices", None)
    if n == 1:
        yield
        return
    if original is None:
        raise ConfigError(f"devices.count: this TensorFlow ({tf.__version__}) cannot run several logical CPUs per "
                          f"worker under multi_worker_mirrored; use devices.count: 1. Received: devices.count={n}")

    def local_devices(self, cluster_resolver, worker_device):
        devices, device_type = original(self, cluster_resolver, worker_device)
        if device_type != "CPU":
            return devices, device_type
        return tuple(f"{worker_device}/device:CPU:{i}" for i in range(n)), "CPU"

    extended._initialize_local_devices = local_devices
    try:
        yield
    finally:
        extended._initialize_local_devices = original


def _require_cluster(kind: str, cluster_resolver) -> None:
    if cluster_resolver is None:
        raise ConfigError(
            f"strategy.kind: {kind} needs its cluster: train with paradl_tf.train(cfg), which starts or "
            "finds it from the `cluster` section, or pass build_strategy(cfg, cluster_resolver=...)"
        )


def _cross_device_ops(name: str) -> tf.distribute.CrossDeviceOps | None:
    if name == "auto":
        return None  # TensorFlow picks: NCCL between GPUs, ring collectives between CPUs
    if name == "nccl":
        return tf.distribute.NcclAllReduce()
    if name == "hierarchical_copy":
        return tf.distribute.HierarchicalCopyAllReduce()
    if name == "reduction_to_one_device":
        return tf.distribute.ReductionToOneDevice()
    raise ConfigError(f"strategy.cross_device_ops: unknown {name!r}")
