"""Mixed precision: `train.precision` as a Keras dtype policy, for Keras 3 and tf_keras alike.

    float32          everything in float32 (the default)
    mixed_bfloat16   variables float32, computation and activations bfloat16; no loss scaling needed
    mixed_float16    variables float32, computation float16; the optimizer is wrapped in a LossScaleOptimizer
    auto             bfloat16 where the hardware has it, float16 on older GPUs, float32 otherwise

The classifier's logits and the loss stay float32 (the models' `logits` layer is float32). A policy is set only
while the model is built and compiled (`precision_policy`): layers keep the policy they were created with, and
the global policy is restored afterwards, so one run does not leak its policy into the next in the same process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

from paradl_tf.errors import ConfigError

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
# CPU flags of native bfloat16 dot products: x86 AVX512-BF16 or AMX, Arm's BF16 extension.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_CPU_FP16_FLAGS = ("avx512_fp16", "amx_fp16")


@dataclass(frozen=True)
class Precision:
    """The policy a run uses and why."""

    policy: str
    why: str

    @property
    def compute_dtype(self) -> str:
        return {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(self.policy, "float32")

    @property
    def loss_scaling(self) -> bool:
        return self.policy == "mixed_float16"

    def describe(self) -> dict:
        """What plan and results.json show."""
        return {"policy": self.policy, "compute_dtype": self.compute_dtype, "variable_dtype": "float32",
                "loss_scaling": self.loss_scaling, "why": self.why}


def resolve_precision(choice: str, device_type: str = "CPU") -> Precision:
    """The policy for `train.precision` on this machine's `device_type` devices."""
    if choice == "auto":
        return _auto(device_type)
    if choice not in POLICIES:
        raise ConfigError(f"train.precision must be one of float32, mixed_bfloat16, mixed_float16, auto. "
                          f"Received: train.precision={choice!r}")
    if choice == "mixed_float16" and device_type == "CPU" and not native_float16("CPU"):
        # Not an error: TensorFlow runs float16 on any CPU, through Eigen when oneDNN cannot (it logs so).
        return Precision(choice, "train.precision: mixed_float16 as asked; this CPU has no native float16 "
                                 "(no avx512_fp16/amx_fp16), so TensorFlow emulates it and it is usually slower "
                                 "than float32: mixed_bfloat16 is the CPU choice")
    return Precision(choice, f"train.precision: {choice} as asked")


def _auto(device_type: str) -> Precision:
    if device_type == "GPU":
        capability = _gpu_capability()
        if capability is None:
            return Precision("float32", "auto: no GPU visible")
        if capability >= (8, 0):
            return Precision("mixed_bfloat16", f"auto: GPU compute capability {capability[0]}.{capability[1]} "
                                               ">= 8.0 has bfloat16")
        if capability >= (7, 0):
            return Precision("mixed_float16", f"auto: GPU compute capability {capability[0]}.{capability[1]} "
                                              "has float16 tensor cores but no bfloat16")
        return Precision("float32", f"auto: GPU compute capability {capability[0]}.{capability[1]} "
                                    "has no fast float16 or bfloat16")
    flags = _cpu_flags()
    found = [f for f in _CPU_BF16_FLAGS if f in flags]
    if found:
        return Precision("mixed_bfloat16", f"auto: the CPU has native bfloat16 ({found[0]})")
    return Precision("float32", "auto: the CPU has no native bfloat16 (no avx512_bf16, amx_bf16 or bf16 flag)")


def _gpu_capability() -> tuple[int, int] | None:
    """The lowest compute capability of the visible GPUs (a run is as fast as its slowest)."""
    import tensorflow as tf

    found = [tf.config.experimental.get_device_details(g).get("compute_capability")
             for g in tf.config.list_physical_devices("GPU")]
    found = [tuple(c) for c in found if c]
    return min(found) if found else None


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (x86 'flags', Arm 'Features'); empty where /proc/cpuinfo is absent."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _cpu_has(flags: tuple[str, ...]) -> bool:
    return bool(_cpu_flags() & set(flags))


def native_float16(device_type: str = "CPU") -> bool:
    """Whether float16 math is native here: CPU flags, or GPUs of compute capability 7.0 and up (tensor cores).
    Elsewhere TensorFlow emulates it, slower than float32."""
    if device_type == "GPU":
        capability = _gpu_capability()
        return capability is not None and capability >= (7, 0)
    return _cpu_has(_CPU_FP16_FLAGS)


@contextlib.contextmanager
def precision_policy(keras: ModuleType, precision: Precision) -> Iterator[None]:
    """Set Keras's global dtype policy while the model is built and compiled; restore the previous one after.
    float32 sets nothing: the process's own policy stays (float32, unless a user set another, e.g. float64)."""
    if precision.policy == "float32":
        yield
        return
    mp = keras.mixed_precision
    previous = mp.global_policy()
    mp.set_global_policy(precision.policy)
    try:
        yield
    finally:
        mp.set_global_policy(previous)


def check_model_precision(model, precision: Precision) -> dict:
    """The policy, why, and the dtypes a built model really uses, for plan and results.json. A mixed policy that
    no layer with weights follows is a ConfigError (a user model that pins float32 would silently run float32)."""
    weighted = [layer for layer in _layers(model) if layer.weights]
    mixed = [layer for layer in weighted if _compute_dtype(layer) != "float32"]
    if precision.policy != "float32" and weighted and not mixed:
        names = ", ".join(layer.name for layer in weighted[:3]) + (", ..." if len(weighted) > 3 else "")
        raise ConfigError(
            f"train.precision: {precision.policy} has no effect on this model: every layer with weights pins "
            f"dtype float32 ({names}); build its layers without dtype='float32' or use train.precision: float32. "
            f"Received: train.precision={precision.policy!r}")
    outputs = getattr(model, "outputs", None)  # None for placed and hybrid models: their last layer makes the logits
    output_dtype = dtype_name(outputs[0].dtype) if outputs else _compute_dtype(weighted[-1]) if weighted else "float32"
    return {
        **precision.describe(),
        "activation_dtype": _compute_dtype(mixed[0]) if mixed else "float32",
        "variable_dtypes": sorted({dtype_name(v.dtype) for v in model.weights}),
        "output_dtype": output_dtype,
        "float32_layers": [layer.name for layer in weighted if _compute_dtype(layer) == "float32"],
    }


def _layers(model) -> list:
    copies = getattr(model, "copies", None)  # hybrid: R placed copies of one model; its layers are the copies
    if copies:
        model = copies[0]
    return list(getattr(model, "placed_layers", None) or model.layers)


def _compute_dtype(layer) -> str:
    return dtype_name(layer.compute_dtype)


def dtype_name(dtype) -> str:
    """'bfloat16' for a TensorFlow, NumPy or Keras dtype (or its name)."""
    return getattr(dtype, "name", str(dtype))
