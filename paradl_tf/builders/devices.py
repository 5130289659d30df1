"""Logical devices: split one CPU (or each GPU) so multi-device code runs on a laptop."""

from __future__ import annotations

import os

import tensorflow as tf

from paradl_tf.config import DevicesConfig, ThreadsConfig
from paradl_tf.errors import ConfigError, DeviceSetupError

_TOO_LATE = (
    "cannot create {n} logical {kind} devices: the TensorFlow runtime is already initialized "
    "with {have}. Call paradl_tf.setup_virtual_devices() before anything touches TensorFlow "
    "devices or tensors; in a notebook, restart the kernel and call it first."
)


def setup_virtual_devices(n: int, device_type: str = "CPU", memory_limit_mb: int | None = None) -> list[str]:
    """Split each physical `device_type` device into `n` logical devices; returns the logical device names.

    Must run before TensorFlow initializes its runtime. Calling it again with the
    layout already in place is a no-op.
    """
    device_type = device_type.upper()
    if n < 1:
        raise DeviceSetupError(f"the number of logical devices must be at least 1. Received: n={n}")
    physical = tf.config.list_physical_devices(device_type)
    if not physical:
        raise DeviceSetupError(
            f"devices.type is {device_type} but TensorFlow sees no {device_type}; "
            f"use devices.type: CPU or run where a {device_type} is visible"
        )
    if device_type == "GPU" and n > 1 and memory_limit_mb is None:
        raise DeviceSetupError(
            f"splitting a GPU into {n} logical devices needs devices.memory_limit_mb (memory per logical GPU)"
        )
    wanted = [tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb) for _ in range(n)]
    for device in physical:
        current = tf.config.get_logical_device_configuration(device)
        if current is None and n == 1 and memory_limit_mb is None:
            continue  # one logical device per physical one: TensorFlow's own default
        if _same_layout(current, wanted):
            continue
        try:
            tf.config.set_logical_device_configuration(device, wanted)
        except RuntimeError:
            have = tf.config.list_logical_devices(device_type)
            if current is None and len(have) == n * len(physical) and memory_limit_mb is None:
                continue  # started with this layout, made by someone else
            raise DeviceSetupError(
                _TOO_LATE.format(n=n, kind=device_type, have=f"{len(have)} logical {device_type} device(s)")
            ) from None
    return logical_device_names(device_type)


def setup_devices(cfg: DevicesConfig) -> list[str]:
    """setup_threads and setup_virtual_devices from the config's `devices` section."""
    setup_threads(cfg.threads)
    return setup_virtual_devices(cfg.count, cfg.type, cfg.memory_limit_mb)


def setup_threads(cfg: ThreadsConfig) -> None:
    """Size TensorFlow's intra-op and inter-op pools (before its runtime starts) and export the sizes to the
    processes this one starts. Asking again for the sizes already in place is a no-op."""
    os.environ.update(cfg.environment())
    threading = tf.config.threading
    pools = (("intra_op", cfg.intra_op, threading.get_intra_op_parallelism_threads,
              threading.set_intra_op_parallelism_threads),
             ("inter_op", cfg.inter_op, threading.get_inter_op_parallelism_threads,
              threading.set_inter_op_parallelism_threads))
    for key, wanted, get, set_threads in pools:
        if wanted is None or get() == wanted:
            continue
        try:
            set_threads(wanted)
        except RuntimeError:
            raise DeviceSetupError(
                f"cannot set devices.threads.{key}: the TensorFlow runtime is already initialized with "
                f"{get() or 'its default'} threads; set it before anything touches TensorFlow devices or tensors. "
                f"Received: devices.threads.{key}={wanted}"
            ) from None


def logical_device_names(device_type: str = "CPU") -> list[str]:
    """Short names of the logical devices of one type, e.g. ['/device:CPU:0', '/device:CPU:1']."""
    return [f"/device:{device_type.upper()}:{i}" for i in range(len(tf.config.list_logical_devices(device_type)))]


def select_devices(wanted: int | list[str] | None, device_type: str, key: str) -> list[str]:
    """Short names of existing logical devices: all of `device_type` (None), the first N, or the named ones.

    `key` names the config key in errors ("strategy.devices asks for 8 CPU devices but 4 exist").
    """
    available = logical_device_names(device_type)
    if wanted is None:
        return available
    if isinstance(wanted, int):
        if wanted > len(available):
            raise ConfigError(
                f"{key} asks for {wanted} {device_type} devices but {len(available)} exist. Received: {key}={wanted}"
            )
        return available[:wanted]
    return [existing_device(name, f"{key}[{i}]") for i, name in enumerate(wanted)]


def existing_device(name: str, key: str) -> str:
    """The short name (/device:CPU:1) of an existing logical device, or a ConfigError that lists them."""
    known = logical_device_names("CPU") + logical_device_names("GPU")
    try:
        canonical = canonical_device(name)
    except ValueError:
        canonical = None
    if canonical not in known:
        raise ConfigError(
            f"{key}: device {name!r} does not exist; logical devices: {', '.join(known)}. Received: {key}={name!r}"
        )
    return canonical


def canonical_device(name: str) -> str:
    """'/device:CPU:1' for '/cpu:1', 'CPU:1' or '/job:localhost/replica:0/task:0/device:CPU:1'."""
    spec = tf.DeviceSpec.from_string(name)
    return f"/device:{(spec.device_type or 'CPU').upper()}:{spec.device_index or 0}"


def _same_layout(current, wanted) -> bool:
    if current is None or len(current) != len(wanted):
        return False
    return all(c.memory_limit == w.memory_limit for c, w in zip(current, wanted))
