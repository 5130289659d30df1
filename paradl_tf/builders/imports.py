"""Resolve user code named in a config as `package.module:function`."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from paradl_tf.errors import ConfigError


def import_callable(path: str, key: str) -> Callable[..., Any]:
    """The callable at `package.module:function`; `key` names the config key in errors."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({exc}). Received: {key}={path!r}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}: module {module_name!r} has no callable {attr!r}. Received: {key}={path!r}")
    return fn
