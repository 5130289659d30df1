"""The bench row "tf.data service local against in-process input on an input-bound pipeline".

    python -m paradl_tf.benchmark.service [--quick]          # prints the row as JSON

The pipeline is the toolkit's own over digits written as TFRecord shards, plus a deliberately heavy map (dense
layers' worth of matmuls per batch, as an augmentation would cost), so the input, not a model, is the
bottleneck: nothing trains, the consumer only takes batches. Measured, in examples/s of the consumer:
- `in_process`: the pipeline in this process (what every training process does without the service);
- `service`: the same pipeline through a local service of `data_workers` data workers, DYNAMIC-sharded by pass
  (the mode synchronous training uses, paradl_tf.files.service);
- `service_light`: the pipeline without the heavy map through the service: the rate at which one consumer can
  receive batches at all, the ceiling of any number of data workers.
On one machine the data workers share the consumer's cores, so the service cannot beat in-process input there;
with data workers on other hosts each brings about one in-process pipeline's rate (the same work on its own
cores), so `remote_estimate` = min(data_workers x in_process, service_light).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import tensorflow as tf

HEAVY_WIDTH, HEAVY_LAYERS = 512, 3
MAP_PARALLEL = 2  # parallel heavy maps per pipeline (per data worker)


def heavy_map(x, y):
    """About HEAVY_LAYERS matmuls of HEAVY_WIDTH per example; the features come back unchanged (up to 1e-30)."""
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    z = flat @ tf.ones([flat.shape[-1], HEAVY_WIDTH]) / HEAVY_WIDTH
    for i in range(HEAVY_LAYERS):
        z = tf.tanh(z @ tf.random.stateless_normal([HEAVY_WIDTH, HEAVY_WIDTH], seed=[i, 0]) / HEAVY_WIDTH)
    return x + 1e-30 * tf.reduce_mean(z), y


def _rate(ds: tf.data.Dataset, batch: int, batches: int, warmup: int = 5) -> float:
    """Examples/s of a fresh iterator over `ds`, after `warmup` batches (tracing, first files, first pass)."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def _rates(datasets: dict, batch: int, batches: int, rounds: int) -> dict[str, list[float]]:
    """Each dataset in turn (A B A B ...), `rounds` times, a fresh iterator each time, one running at once: a
    shared machine's drift hits both alike. (Alternating chunks of two live iterators would not do: the
    service's data workers would go on producing, on the same cores, while the other is timed.)"""
    rates: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, make in datasets.items():
            rates[name].append(_rate(make(), batch, batches))
    return rates


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def service_input_row(data_workers: int = 2, batch: int = 64, batches: int = 60, rounds: int = 5,
                      work_dir: str | None = None) -> dict:
    """The row: in-process and through a local service (medians of `rounds` alternating chunks), the receive
    ceiling, the estimate for remote data workers."""
    from paradl_tf.builders.data import load_splits
    from paradl_tf.cluster.data_service import LocalService
    from paradl_tf.config import load_config
    from paradl_tf.files.sources import load_file_source
    from paradl_tf.files.write import write_shards

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        shards = Path(tmp) / "shards"
        base = load_config(overrides=["data.kind=digits"])
        write_shards(load_splits(base.data, 0), str(shards), 4, source="digits")
        cfg = load_config(overrides=["data.kind=tfrecord", f"data.train_files={shards}/train-*.tfrecord",
                                     f"data.validation_files={shards}/validation-*.tfrecord"])
        source = load_file_source(cfg.data)
        plan = source.plan(1, batch, 1)

        def pipeline(heavy: bool, parallel: int = MAP_PARALLEL) -> tf.data.Dataset:
            ds = source.train_pipeline(plan, 0, batch, seed=0)
            return ds.map(heavy_map, num_parallel_calls=parallel) if heavy else ds

        def served(heavy: bool, address: str) -> tf.data.Dataset:
            return pipeline(heavy).apply(tf.data.experimental.service.distribute(
                processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=address)).prefetch(4)

        with LocalService(data_workers, Path(tmp) / "logs") as service:
            # In-process gets as many parallel maps as all the data workers together: the same threads either way.
            rates = _rates({"in_process": lambda: pipeline(True, MAP_PARALLEL * data_workers).prefetch(4),
                            "service": lambda: served(True, service.address)}, batch, batches, rounds)
            light = _rate(served(False, service.address), batch, batches)
    ratios = [b / a for a, b in zip(rates["in_process"], rates["service"])]
    in_process, through = _median(rates["in_process"]), _median(rates["service"])
    return {"pipeline": f"digits TFRecord, batch {batch}, heavy map of {HEAVY_LAYERS} x {HEAVY_WIDTH}-wide matmuls, "
                        f"{MAP_PARALLEL} parallel per data worker, {MAP_PARALLEL * data_workers} in-process",
            "data_workers": data_workers, "in_process_examples_per_sec": in_process,
            "service_examples_per_sec": through, "service_over_in_process": _median(ratios),
            "ratio_per_round": ratios,
            "service_light_examples_per_sec": light,
            "remote_estimate_examples_per_sec": min(data_workers * in_process, light),
            "note": "data workers on this machine share its cores with the consumer; remote_estimate assumes each "
                    "data worker on its own host produces one in-process pipeline's rate"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--out", default=None, help="write the row here as JSON (else print it)")
    args = parser.parse_args()
    from paradl_tf import cluster as cl

    if cl.in_private_network():  # run by the bench inside a private network namespace: bring loopback up
        cl.loopback_up()
    row = service_input_row(rounds=args.rounds or (2 if args.quick else 5), batches=args.batches)
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    else:
        print(json.dumps(row, indent=2))
