"""One process: default, one_device, mirrored, model_parallel and hybrid run the fit skeleton with its default hooks."""

from paradl_tf.runs.fit import train  # noqa: F401
from paradl_tf.runs.plan import plan  # noqa: F401
