"""One benchmark measurement in a fresh process; prints one result line.

    python -m paradl_tf.benchmark.worker --spec='{"kind": "train", "impl": "toolkit", "config": {...}, ...}'

Fresh, because logical devices must be configured before TensorFlow starts and a process
holds one device layout for its whole life. paradl_tf.benchmark.processes starts one of these per
measurement and reads the line that starts with MARK; everything else goes to the log.
Kinds: `train` (impl `toolkit`: paradl_tf.train on the config; impl `reference`: the
hand-written script of paradl_tf.benchmark.reference; impl `tutorial`: its TensorFlow-tutorial-style script,
TUTORIALS[spec["tutorial"]]), `matmul` (the matmul peak of each dtype), and for the
data section `data_write` (shards of an in-memory source, or of synthetic images generated shard by shard) and
`input` (examples/s of training pipelines alone, no model, interleaved in one process).
"""

from __future__ import annotations

import time

_T0 = time.time()  # noqa: E402 - before any heavy import: measures interpreter start-up

import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

MARK = "PARADL_BENCH_RESULT "


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if a.startswith("--spec=")]
    if len(args) != 1:
        print("usage: python -m paradl_tf.benchmark.worker --spec=JSON", file=sys.stderr)
        return 2
    spec = json.loads(args[0].removeprefix("--spec="))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = spec.get("spawned_at")
    result: dict[str, Any] = {"process_start_seconds": _T0 - started if started else None,
                              # the CPUs it may run on (side by side, each side is pinned to its own)
                              "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        result.update(MEASURES[spec["kind"]](spec))
        result["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - report any failure as data, never a number
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.update(ok=False, error=f"{type(exc).__name__}: {first}"[:300])
    result.update(_memory(children=bool(spec.get("config", {}).get("cluster"))))
    result["result_after_seconds"] = time.time() - started if started else None
    print(MARK + json.dumps(result), flush=True)
    sys.stderr.flush()
    return 0


def _memory(children: bool) -> dict[str, int | None]:
    """Peak resident memory of this process and, for a local cluster, of the largest process of the cluster
    (the largest descendant waited for). Without a cluster the children figure would only show helper
    processes that TensorFlow forks, which Linux charges with the parent's memory at fork, so it is left out."""
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "children_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale if children else None,
    }


# ================================================================ train: toolkit, hand-written or tutorial-style
def measure_train(spec: dict) -> dict[str, Any]:
    t = time.perf_counter()
    import tensorflow as tf  # noqa: F401

    keras = importlib.import_module("keras" if spec["keras"] == "keras3" else "tf_keras")
    out: dict[str, Any] = {"import_seconds": time.perf_counter() - t, "keras": spec["keras"]}
    if spec["impl"] == "toolkit":
        out.update(_toolkit(spec))
    elif spec["impl"] == "tutorial":
        from paradl_tf.benchmark.reference import TUTORIALS

        out.update(TUTORIALS[spec["tutorial"]](spec["config"], keras))
    else:
        from paradl_tf.benchmark.reference import REFERENCES

        out.update(REFERENCES[spec["reference"]](spec["config"], keras))
    epochs = out["epoch_seconds"]
    out["first_epoch_seconds"] = epochs[0] if epochs else None
    return out


def _toolkit(spec: dict) -> dict[str, Any]:
    """paradl_tf's public path: load_config on a YAML file, then prepare + fit, or train for a cluster."""
    import yaml

    from paradl_tf.config import load_config

    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "bench_config.yaml"
    path.write_text(yaml.safe_dump({**spec["config"], "output_dir": str(run_dir / "run")}, sort_keys=False))
    cfg = load_config(path)
    if "cluster" not in spec["config"]:
        return _toolkit_prepare(cfg)
    out = _toolkit_train(cfg)
    if spec.get("plan_link"):  # what `paradl-tf plan --link` says of the same config (the network part checks it)
        out["plan"] = _plan_of(cfg, spec["plan_link"], spec["plan_compute"])
    return out


def _toolkit_prepare(cfg) -> dict[str, Any]:
    """paradl_tf.prepare builds what the toolkit controls (devices, strategy, Keras, data, model, compile); then the
    same model.fit call as paradl_tf.train makes, without validation_data: only training steps are measured, and
    Keras 3's validation under MirroredStrategy costs seconds per epoch that no figure here would show."""
    from paradl_tf.benchmark.reference.fit import epoch_timer
    from paradl_tf.runs.fit import prepare

    t = time.perf_counter()
    job = prepare(cfg)
    build_seconds = time.perf_counter() - t
    timer = epoch_timer(job.keras)
    history = job.model.fit(job.datasets.train_stream, epochs=cfg.train.epochs,
                            steps_per_epoch=cfg.train.steps_per_epoch, shuffle=False, callbacks=[timer], verbose=0)
    out = {
        # The last epoch's training accuracy: what the precision section compares across dtypes.
        "train_accuracy": float(history.history["accuracy"][-1]),
        "epoch_seconds": timer.epoch_seconds,
        "epoch_ends_unix": timer.epoch_ends_unix,
        "steps_per_epoch": job.datasets.steps_per_epoch,
        "global_batch_size": cfg.train.global_batch_size,
        "build_seconds": build_seconds,
        "replicas": job.replicas,
        "keras": job.keras_name,
        "params": int(job.model.count_params()),
    }
    if job.placement:
        out["parameter_bytes_per_device"] = {s["device"]: s["parameter_bytes"] for s in job.placement["stages"]}
    # Gradient bytes each device sends into the all-reduce per step: hybrid, its stage's; Mirrored, the whole model's.
    if job.placement and "groups" in job.placement:
        out["all_reduce_bytes_per_device"] = max(s["all_reduce_bytes_per_step"] for s in job.placement["stages"])
    elif job.replicas > 1:
        import numpy as np
        import tensorflow as tf

        # Keras 3 and tf_keras weights both have a shape and a dtype (a name in Keras 3, a DType in tf_keras).
        out["all_reduce_bytes_per_device"] = sum(int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size
                                                 for w in job.model.trainable_weights)
    return out


def _toolkit_train(cfg) -> dict[str, Any]:
    """paradl_tf.train, the only public path of a multi-process strategy (it starts the local cluster)."""
    from paradl_tf.api import train

    t = time.perf_counter()
    results = train(cfg)
    call_seconds = time.perf_counter() - t
    # A local cluster's results time the chief (chief_seconds) apart from the whole run (wall_seconds).
    chief_seconds = results.get("chief_seconds", results["wall_seconds"])
    return {
        "epoch_seconds": results["epoch_train_seconds"],
        "epoch_ends_unix": results["epoch_train_ends_unix"],
        "steps_per_epoch": results["steps_per_epoch"],
        "global_batch_size": results["global_batch_size"],
        "build_seconds": chief_seconds - results["fit_seconds"],
        "replicas": results["replicas"],
        "keras": results["keras"],
        # The driver process and the task processes, up and reachable, before the chief's clock starts.
        "cluster_start_seconds": call_seconds - chief_seconds,
        "history": results["history"],  # validation accuracy per epoch: the network part's time to a target
    }


def _plan_of(cfg, link: str, compute: str) -> dict[str, Any]:
    """`paradl-tf plan --link=<link> --compute=<compute>`'s figures for cfg: the bytes a step sends and its
    predicted communication."""
    from paradl_tf.api import plan

    p = plan(cfg, link=link, compute=compute)
    keys = ("strategy", "gradient_bytes", "parameter_bytes", "ps_bytes", "cluster", "communication")
    return {k: p[k] for k in keys if k in p}


# ================================================================ matmul: the machine's peaks in TensorFlow
def measure_matmul(spec: dict) -> dict[str, Any]:
    """The best matmul rate over `sizes`, per dtype of `dtypes` (float16 only where it is native: emulated, it
    is no peak of anything a run would use); `native_float16` says which."""
    t = time.perf_counter()
    import tensorflow as tf

    from paradl_tf.builders.precision import native_float16

    out: dict[str, Any] = {"import_seconds": time.perf_counter() - t, **_machine(tf)}
    gpu = spec.get("device_type", "auto") in ("auto", "GPU") and tf.config.list_physical_devices("GPU")
    device = "/GPU:0" if gpu else "/CPU:0"
    out["native_float16"] = native_float16("GPU" if gpu else "CPU")
    dtypes = [d for d in spec.get("dtypes", ["float32"]) if d != "float16" or out["native_float16"]]
    out["matmul"] = {d: {"device": device, **_matmul_peak(tf, device, getattr(tf, d), spec)} for d in dtypes}
    return out


def _matmul_peak(tf, device: str, dtype, spec: dict) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for n in spec["sizes"]:
        with tf.device(device):
            a = tf.cast(tf.random.uniform((n, n)), dtype)
            b = tf.cast(tf.random.uniform((n, n)), dtype)
            # The sum (n^2, next to 2 n^3) in float32: one number back, whatever the dtype.
            step = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32)))
            float(step(a, b))  # trace and warm up
            rates = []
            deadline = time.perf_counter() + spec.get("seconds_per_size", 2.0)
            while len(rates) < spec.get("min_calls", 3) or time.perf_counter() < deadline:
                t = time.perf_counter()
                float(step(a, b))
                rates.append(2.0 * n**3 / (time.perf_counter() - t))
                if len(rates) >= 200:
                    break
        if not best or max(rates) > max(best["flops_per_sec"]):
            best = {"size": n, "flops_per_sec": rates}
    return best


def _machine(tf) -> dict[str, Any]:
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # noqa: BLE001 - details are optional
            names.append(gpu.name)
    versions = {"tensorflow_version": tf.__version__}
    for name, package in (("keras_version", "keras"), ("tf_keras_version", "tf_keras")):
        try:
            versions[name] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"gpus": names, "physical_cpus_seen_by_tf": len(tf.config.list_physical_devices("CPU")), **versions}


# ================================================================ data: shards, and input pipelines alone
def _load(spec: dict, name: str, config: dict):
    """A config dict through the public path: a YAML file and load_config."""
    import yaml

    from paradl_tf.config import load_config

    path = Path(spec["run_dir"]) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**config, "output_dir": str(Path(spec["run_dir"]) / name)}, sort_keys=False))
    return load_config(path)


def measure_data_write(spec: dict) -> dict[str, Any]:
    """Write TFRecord shards for each of spec["jobs"] (name -> job) under job["out"], all in this one process.
    A job with `stream`: synthetic images (class prototypes plus noise, as data.kind synthetic_images) generated
    and written one shard at a time, so that the writer holds one shard whatever the total; else the job's
    in-memory `data` source through `paradl-tf data write`'s write_shards (the very arrays training loads)."""
    from paradl_tf.builders.data import load_splits
    from paradl_tf.files.write import write_shards

    written = {}
    for name, job in spec["jobs"].items():
        t = time.perf_counter()
        out = job["out"]
        if job.get("stream"):
            done = _write_stream(out, job["stream"])
        else:
            cfg = _load(spec, name, {"data": job["data"]})
            meta = write_shards(load_splits(cfg.data, 0), out, job["shards"], "tfrecord", 1, source=cfg.data.kind)
            done = {"train_examples": meta["train_examples"]}
        done["files"] = len([f for f in os.listdir(out) if f.startswith("train-")])
        done["bytes"] = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        written[name] = {**done, "write_seconds": time.perf_counter() - t}
    return {"written": written}


def _write_stream(out: str, s: dict) -> dict[str, Any]:
    """Synthetic images shard by shard (ids restart in each shard: nothing here counts them)."""
    import numpy as np

    from paradl_tf.files.formats import METADATA
    from paradl_tf.files.write import _tfrecord

    os.makedirs(out, exist_ok=True)
    shape, classes, rng = list(s["image_shape"]), s["num_classes"], np.random.default_rng(0)
    prototypes = rng.normal(size=(classes, *shape)).astype("float32")
    counts = {}
    for split, total, shards in (("train", s["examples"], s["shards"]), ("validation", s["validation_examples"], 1)):
        for i, n in enumerate(len(p) for p in np.array_split(np.arange(total), shards)):
            y = rng.integers(0, classes, size=n).astype("int32")
            x = prototypes[y] + rng.normal(scale=2.0, size=(n, *shape)).astype("float32")
            name = f"{split}-{i:05d}-of-{shards:05d}.tfrecord"
            _tfrecord(os.path.join(out, name), x, y, range(n))
            counts[name] = n
    meta = {"format": "tfrecord", "source": "synthetic_images (bench, written shard by shard)",
            "feature_shape": shape, "num_classes": classes, "feature_key": "x", "label_key": "y", "examples": counts,
            "train_examples": s["examples"], "validation_examples": s["validation_examples"]}
    Path(out, METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    return {"train_examples": s["examples"]}


def measure_input(spec: dict) -> dict[str, Any]:
    """Examples/s of each config's training pipeline (`Datasets.train_stream`, as paradl_tf.train feeds fit) with
    no model: after `warmup` batches, `rounds` rounds of `batches` batches from each pipeline in turn (the order
    alternates between rounds), one iterator each for the whole process."""
    t = time.perf_counter()
    import tensorflow  # noqa: F401 - timed apart from the rest

    from paradl_tf.builders.data import build_dataset, load_source
    from paradl_tf.builders.devices import setup_devices

    out: dict[str, Any] = {"import_seconds": time.perf_counter() - t}
    cfgs = {name: _load(spec, name, c) for name, c in spec["configs"].items()}
    setup_devices(next(iter(cfgs.values())).devices)
    streams = {}
    for name, cfg in cfgs.items():
        it = iter(build_dataset(cfg, load_source(cfg.data, cfg.train.seed), None).train_stream)
        for _ in range(spec["warmup"]):
            next(it)
        streams[name] = it
    batch = next(iter(cfgs.values())).train.global_batch_size
    samples: dict[str, list[float]] = {name: [] for name in cfgs}
    for r in range(spec["rounds"]):
        for name in (list(streams) if r % 2 == 0 else list(reversed(streams))):
            it, n = streams[name], spec["batches"]
            start = time.perf_counter()
            for _ in range(n):
                next(it)
            samples[name].append(n * batch / (time.perf_counter() - start))
    out.update(examples_per_sec=samples, global_batch_size=batch, batches_per_round=spec["batches"])
    return out


MEASURES = {"train": measure_train, "matmul": measure_matmul, "data_write": measure_data_write,
            "input": measure_input}


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    # Skip TensorFlow's and the strategies' teardown: the measurement is over and printed.
    os._exit(code)
