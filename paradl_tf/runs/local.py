"""One process: default, one_device, mirrored, model_parallel and hybrid run the fit skeleton with its default hooks.

With a local tf.data service (data.service.kind: local), paradl_tf.train launches this module as the driver of a
local cluster (`python -m paradl_tf.runs.local CONFIG STATUS`, in private namespaces): the run and the service's
dispatcher and data workers share a network that only has loopback.
"""

import sys
from pathlib import Path

from paradl_tf import cluster as cl
from paradl_tf.config import Config
from paradl_tf.runs.fit import train  # noqa: F401
from paradl_tf.runs.plan import plan  # noqa: F401


def drive(cfg: Config, status_path: Path) -> dict:
    """The driver's work: train in this process, with the service beside it (paradl_tf.runs.fit.train)."""
    if cl.in_private_network():
        cl.loopback_up()
    return train(cfg)


if __name__ == "__main__":
    cl.driver_main(sys.argv, drive)
