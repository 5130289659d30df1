"""Training input through the tf.data service: the pipeline's graph runs on the service's data workers, the
training processes only receive batches (tf.data.experimental.service.distribute).

Processing mode, per strategy:
- synchronous (default, Mirrored, MultiWorkerMirrored): every input pipeline keeps its own share of the files
  (shard_plan, as without the service) and reads it as its own job, DYNAMIC-sharded (distributed_epoch) by pass:
  each pass over the share goes whole to one data worker. The stream never ends, so a consumer never gets fewer
  batches than another and no all-reduce waits on a pipeline that ran out; fit takes steps_per_epoch of it.
- parameter servers: one job shared by every worker over all the files, DYNAMIC-sharded: each pass's batches go
  to whichever worker asks first, each batch to one worker (TensorFlow's visitation answer for
  ClusterCoordinator.schedule, which itself gives none).

What stays deterministic: pass k's batches (files, shuffle) depend on the seed and k alone. What does not: the
order in which a consumer receives batches of passes that different data workers produce at once, and a
resumed run, which starts again at the pass the interrupted one was in. DYNAMIC sharding is at most once: a
data worker that dies loses the rest of the pass it was producing; the others go on.
"""

from __future__ import annotations

import hashlib

import tensorflow as tf

from paradl_tf.cluster.data_service import check_dispatcher, resolve_address
from paradl_tf.files.sources import FileSource, ShardPlan

# DYNAMIC hands out one split per request to the dispatcher; splits here are whole passes, not examples, so that
# round trip is paid once per pass (per-element splits are slow: tensorflow/tensorflow#70541).
SYNC_MODE = tf.data.experimental.service.ShardingPolicy.DYNAMIC
PS_MODE = tf.data.experimental.service.ShardingPolicy.DYNAMIC


def service_mode(strategy_kind: str) -> str:
    """For plan and results.json: how the service splits the training data under this strategy."""
    if strategy_kind == "parameter_server":
        return "distributed_epoch (dynamic), one job shared by the workers"
    return "distributed_epoch (dynamic) by pass, one job per input pipeline over its own shard"


def service_address(cfg) -> str | None:
    """The dispatcher this run reads through (checked to answer), or None where the input runs in-process."""
    service = getattr(cfg.data, "service", None)
    if service is None:
        return None
    address = resolve_address(service)
    check_dispatcher(address, "data.service.address" if service.kind == "address" else "data.service")
    return address


def sync_train_pipeline(source: FileSource, plan: ShardPlan, index, batch: int, seed: int, address: str,
                        start_batch: int = 0, epoch_batches: int | None = None) -> tf.data.Dataset:
    """Pipeline `index`'s batches produced by the service: its own job (no job name: a new job per iterator,
    so pipelines never share one), passes split dynamically between the data workers. `start_batch` is rounded
    down to its pass: a data worker can only start a pass at its beginning."""
    start = start_batch - start_batch % plan.batches_per_pass
    stream = source.train_pipeline(plan, index, batch, seed, start_batch=start)
    batches = stream.apply(tf.data.experimental.service.distribute(processing_mode=SYNC_MODE, service=address))
    if epoch_batches is None:
        return batches
    return batches.take(epoch_batches).apply(tf.data.experimental.assert_cardinality(epoch_batches))


def shared_train_pipeline(source: FileSource, batch: int, seed: int, address: str, run_key: str) -> tf.data.Dataset:
    """Parameter servers: one endless stream over every file, one job named for the run that every worker joins;
    each batch goes to the first worker that asks."""
    plan = source.plan(1, batch, 1)
    stream = source.train_pipeline(plan, 0, batch, seed)
    job = "paradl-" + hashlib.sha256(run_key.encode()).hexdigest()[:12]
    return stream.apply(tf.data.experimental.service.distribute(processing_mode=PS_MODE, service=address,
                                                                job_name=job))
