"""Which Keras runs a strategy: Keras 3 (`keras`) where it works, Keras 2 (`tf_keras`) where it does not."""

from __future__ import annotations

import importlib
from types import ModuleType

from paradl_tf.errors import ConfigError

# strategy kind -> why Keras 3 cannot run it (None: it can).
KERAS3_UNSUPPORTED: dict[str, str | None] = {
    "default": None,
    "one_device": None,
    "mirrored": None,
    "model_parallel": None,  # tf.device-pinned layers, one replica: works with Keras 3 and tf_keras
    "hybrid": None,  # R placed copies in one process, reduced with CrossDeviceOps: Keras 3 and tf_keras
    "parameter_server": (
        "Keras 3 does not support ParameterServerStrategy; the Keras team's answer is to use tf.keras 2 "
        "(the tf_keras package) for it (keras-team/keras#18624)"
    ),
    "multi_worker_mirrored": (
        "Keras 3's model.fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585); "
        "tf_keras (Keras 2) runs it"
    ),
}

# Keras 3 builds steps_per_execution > 1 as a tf.cond inside a tf.while_loop around strategy.run;
# MirroredStrategy's cross-replica merge_call inside that cond fails with
# "You must feed a value for placeholder tensor .../while/cond/Placeholder" (keras-team/keras#19246, open).
# tf_keras loops over strategy.run without the cond and runs it correctly.
STEPS_PER_EXECUTION_WHY = (
    "Keras 3 crashes under a multi-replica MirroredStrategy with steps_per_execution > 1 "
    "(keras-team/keras#19246)"
)


def resolve_keras(choice: str, strategy_kind: str, replicas: int = 1, steps_per_execution: int = 1) -> str:
    """'keras3' or 'tf_keras' for this run; an explicit choice that cannot work is a ConfigError."""
    why = keras3_blocker(strategy_kind, replicas, steps_per_execution)
    if choice == "auto":
        return "tf_keras" if why else "keras3"
    if choice == "keras3" and why:
        raise ConfigError(f"keras: keras3 cannot run this: {why}; use keras: auto or tf_keras. Received: keras='keras3'")
    return choice


def keras3_blocker(strategy_kind: str, replicas: int = 1, steps_per_execution: int = 1) -> str | None:
    """Why Keras 3 cannot run this combination, or None."""
    why = KERAS3_UNSUPPORTED.get(strategy_kind)
    if why:
        return why
    if strategy_kind == "mirrored" and replicas > 1 and steps_per_execution > 1:
        return STEPS_PER_EXECUTION_WHY
    return None


def import_keras(name: str) -> ModuleType:
    """The Keras module for 'keras3' or 'tf_keras'."""
    if name not in ("keras3", "tf_keras"):
        raise ConfigError(f"keras must be one of auto, keras3, tf_keras. Received: keras={name!r}")
    return importlib.import_module("keras" if name == "keras3" else "tf_keras")
