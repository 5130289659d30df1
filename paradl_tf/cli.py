"""paradl-tf: train or inspect a run described by a YAML config.

    paradl-tf train --config=configs/sync_mirrored.yaml                  # MirroredStrategy over 4 virtual CPUs
    paradl-tf train --config=configs/sync_mirrored.yaml --set train.epochs=3 --set strategy.devices=2
    paradl-tf train --config=configs/one_device.yaml                     # the single-device baseline
    paradl-tf plan --config=configs/sync_mirrored.yaml [--json]          # devices, replicas, variables; no training
    paradl-tf plan --config=configs/sync_multiworker.yaml --link=25Gbit  # + communication per step over such links
    paradl-tf train --config=configs/async_ps.yaml                       # parameter servers: 2 workers, 1 ps, local
    paradl-tf train --config=configs/sync_multiworker.yaml               # MultiWorkerMirroredStrategy: 2 processes
    paradl-tf tf-config --config=configs/sync_multiworker.yaml --hosts=10.0.0.1,10.0.0.2   # TF_CONFIG per task
    paradl-tf export --config=configs/sync_multiworker.yaml --format=jobset --image=IMAGE  # JobSet (or indexed-job,
                                                                         # tfjob, slurm)
    TF_CONFIG='{"cluster": ..., "task": {"type": "ps", "index": 0}}' paradl-tf serve   # one cluster task per host
    paradl-tf bench [--quick] [--out=bench]                              # every method measured: results.json, RESULTS.md, plots

Bad input prints one `error: ...` line to stderr and exits with status 2. TensorFlow's own log lines stay out
of the terminal unless --tf_logs is given.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

from absl import app, flags

from paradl_tf.errors import ParadlError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "YAML config file describing the run.")
flags.DEFINE_multi_string("set", [], "Override a config key, e.g. --set train.epochs=3 (repeatable).")
flags.DEFINE_bool("tf_logs", False, "Show TensorFlow's own log lines (C++ start-up lines, INFO records) for debugging.")
flags.DEFINE_bool("json", False, "plan: print JSON instead of text.")
flags.DEFINE_string("link", None, "plan: a link bandwidth, e.g. 25Gbit, 100Mbit: add the bytes and seconds each step "
                    "sends over such links (all-reduce, ps traffic, activations between stages) next to a compute "
                    "time measured here.")
flags.DEFINE_string("job", None, "serve: the job of the task to run (worker, ps, or a tf.data service's dispatcher "
                    "or data_worker); default: TF_CONFIG's task.")
flags.DEFINE_integer("task", None, "serve: the index of the task to run; default: TF_CONFIG's task.")
flags.DEFINE_bool("quick", False, "bench: fewer repetitions, methods and points (under 19 minutes on 2 cores, the data and network parts included).")
flags.DEFINE_string("out", "bench", "bench: directory for results.json, RESULTS.md and the plots.")
flags.DEFINE_list("parts", None,
                  "bench: which parts to measure, each on its own time budget: main (every method against its "
                  "hand-written and tutorial-style code), sections (precision, threads), sweeps (batch, width), data "
                  "(files against memory), network (sync against async on emulated hosts: slow links, a straggler; root); "
                  "default: all five.")
flags.DEFINE_list("methods", None, "bench: only these methods in the main table (e.g. "
                  "multi_worker_mirrored_2,parameter_server); default: all.")
flags.DEFINE_bool("virtual_gpus", False, "bench: on a GPU machine, split GPU 0 into logical GPUs for multi-device methods.")
flags.DEFINE_list("hosts", [], "tf-config: the hosts of the cluster, one task each ('host' or 'host:port'), "
                  "in order chief, workers, ps.")
EXPORT_FORMATS = ("tfjob", "jobset", "indexed-job", "slurm")
DATA_FORMATS = ("tfrecord", "image_folder", "csv")
flags.DEFINE_string("format", None,
                    "export: tfjob (a Kubeflow TFJob; needs the legacy operator), jobset, indexed-job (an Indexed Job "
                    "and headless Service; multi-worker) or slurm (an sbatch script); default tfjob. data write: "
                    "tfrecord, image_folder or csv; default tfrecord.")
flags.DEFINE_integer("shards", 4, "data write: training files to write.", lower_bound=1)
flags.DEFINE_integer("validation_shards", 1, "data write: validation files to write.", lower_bound=1)
flags.DEFINE_string("image", None, "export to Kubernetes: the container image with paradl-tf installed.")
flags.DEFINE_string("command", "paradl-tf", "export: the command that runs paradl-tf on a node or in a pod.")
flags.DEFINE_string("cpu", None, "export to Kubernetes: CPU each pod requests, e.g. 4.")
flags.DEFINE_string("memory", None, "export to Kubernetes: memory each pod requests and is limited to, e.g. 16Gi.")
flags.DEFINE_integer("gpus", None, "export to Kubernetes: nvidia.com/gpu per worker pod; default 1 where "
                     "devices.type is GPU, else none.", lower_bound=0)
flags.DEFINE_string("checkpoint_claim", None, "export to Kubernetes: a ReadWriteMany PersistentVolumeClaim mounted "
                    "on checkpoint.dir's parent in every pod that trains, so a restarted run resumes.")
flags.DEFINE_bool("tiny", False, "bench: tiny models and concurrent processes, for tests; the speeds mean nothing.")


@dataclass(frozen=True)
class Command:
    summary: str
    flags: tuple[str, ...]
    examples: tuple[str, ...]


COMMANDS = {
    "train": Command(
        "Train with model.fit as the config says; writes config.yaml, results.json (and the model) to output_dir.",
        ("config", "set", "tf_logs"),
        ("paradl-tf train --config=configs/sync_mirrored.yaml",
         "paradl-tf train --config=configs/sync_mirrored.yaml --set train.epochs=3 --set strategy.devices=2",
         "paradl-tf train --config=configs/async_ps.yaml          # parameter servers: 2 workers, 1 ps, local",
         "paradl-tf train --config=configs/sync_multiworker.yaml  # MultiWorkerMirroredStrategy: 2 processes"),
    ),
    "plan": Command(
        "Show devices, replicas, the batch split, variables and where each value came from; trains nothing.",
        ("config", "set", "json", "link", "tf_logs"),
        ("paradl-tf plan --config=configs/sync_mirrored.yaml",
         "paradl-tf plan --config=configs/model_parallel.yaml --json",
         "paradl-tf plan --config=configs/sync_multiworker.yaml --link=25Gbit   # will the network dominate?"),
    ),
    "serve": Command(
        "Run one task of a cluster (worker, ps, or a tf.data service's dispatcher or data_worker) until stopped.",
        ("job", "task", "config", "set"),
        ("TF_CONFIG='{\"cluster\": {...}, \"task\": {\"type\": \"ps\", \"index\": 0}}' paradl-tf serve",
         "TF_CONFIG='{\"cluster\": {\"dispatcher\": [\"h0:5050\"], \"data_worker\": [\"h1:5051\"]}}' "
         "paradl-tf serve --job=data_worker --task=0",
         "paradl-tf serve --config=configs/async_ps.yaml --set cluster.resolver=slurm   # in an sbatch step"),
    ),
    "tf-config": Command(
        "Print the TF_CONFIG of every task of a multi-host run, given its hosts.",
        ("config", "set", "hosts"),
        ("paradl-tf tf-config --config=configs/sync_multiworker.yaml --hosts=10.0.0.1,10.0.0.2",),
    ),
    "export": Command(
        "Write what launches the config on a cluster: a JobSet, an Indexed Job, a Kubeflow TFJob or an sbatch script.",
        ("config", "set", "format", "image", "command", "cpu", "memory", "gpus", "checkpoint_claim"),
        ("paradl-tf export --config=configs/sync_multiworker.yaml --format=jobset --image=registry/paradl:1 > jobset.yaml",
         "paradl-tf export --config=configs/sync_multiworker.yaml --format=indexed-job --image=registry/paradl:1 > job.yaml",
         "paradl-tf export --config=configs/async_ps.yaml --format=slurm > job.sbatch"),
    ),
    "data write": Command(
        "Write the config's in-memory data (digits, synthetic, a user's arrays) as TFRecord, image-folder or CSV shards.",
        ("config", "set", "out", "shards", "validation_shards", "format", "tf_logs"),
        ("paradl-tf data write --config=configs/sync_mirrored.yaml --out=runs/digits_tfrecord --shards=4",
         "paradl-tf train --config=configs/tfrecord_multiworker.yaml   # then train on the shards"),
    ),
    "bench": Command(
        "Measure every method against one device and hand-written tf.distribute; writes results.json, RESULTS.md, plots.",
        ("quick", "out", "parts", "methods", "virtual_gpus", "tiny", "tf_logs"),
        ("paradl-tf bench --quick --out=/tmp/bench", "paradl-tf bench   # the full run, under two hours on 2 cores",
         "paradl-tf bench --parts=sections --out=/tmp/bench   # precision and threads only"),
    ),
}
HELP_FLAGS = ("--help", "-h", "-help", "--helpshort", "-?")


def main(argv: list[str]) -> None:
    command = " ".join(argv[1:])
    if command not in COMMANDS:
        _fail(f"expected one command, {_choices()}; got {command or 'nothing'}. See paradl-tf --help")
    try:
        _run(command)
    except ParadlError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        print("error: interrupted; every process this run started was stopped", file=sys.stderr)
        sys.exit(130)


def _run(command: str) -> None:
    # Every TensorFlow this command starts, here or in its cluster's tasks, reads this: C++ INFO and WARNING
    # lines stay out (a task's log file keeps its errors) unless --tf_logs asks for everything.
    if FLAGS.tf_logs:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if command == "serve":  # one task of a cluster, from TF_CONFIG
        from paradl_tf.cluster import REQUIRED_JOBS, resolver_tf_config, serve

        environ = os.environ
        if FLAGS.config and "TF_CONFIG" not in os.environ:
            from paradl_tf.config import load_config

            cfg = load_config(FLAGS.config, FLAGS.set)
            required = REQUIRED_JOBS.get(cfg.strategy.kind, ())
            environ = {**os.environ, "TF_CONFIG": resolver_tf_config(cfg.cluster, required)}
        serve(FLAGS.job, FLAGS.task, environ)
        return
    if command == "bench":  # no run config: the benchmark builds one per measurement
        if importlib.util.find_spec("matplotlib") is None:
            raise ParadlError("paradl-tf bench needs its extra for the plots: pip install 'paradl_tf[bench]'")
        from paradl_tf.benchmark.parts import PARTS, check_selection
        from paradl_tf.benchmark.run import run_bench

        parts = PARTS if FLAGS.parts is None else FLAGS.parts
        check_selection(parts, FLAGS.methods)  # before TensorFlow starts
        _start_tensorflow()
        run_bench(quick=FLAGS.quick, out_dir=FLAGS.out, tiny=FLAGS.tiny, virtual_gpus=FLAGS.virtual_gpus,
                  parts=parts, methods=FLAGS.methods)
        return
    from paradl_tf.config import load_config

    cfg = load_config(FLAGS.config, FLAGS.set)  # validated before TensorFlow starts
    if command in ("tf-config", "export"):  # what a multi-host run needs, from the config alone
        from paradl_tf.cluster import deploy

        if command == "export":
            fmt = _format(EXPORT_FORMATS)
            print(deploy.export(cfg, fmt, FLAGS.config, FLAGS.image, FLAGS.command, FLAGS.set, cpu=FLAGS.cpu,
                                memory=FLAGS.memory, gpus=FLAGS.gpus, checkpoint_claim=FLAGS.checkpoint_claim), end="")
        else:
            for task, text in deploy.tf_configs(cfg, FLAGS.hosts).items():
                print(f"{task}\tTF_CONFIG='{text}'")
        return
    if command == "data write":
        if not FLAGS["out"].present:
            raise ParadlError("data write: --out is required: the directory to write the shards to")
        _start_tensorflow()
        from paradl_tf.builders.data import load_splits
        from paradl_tf.files.write import write_shards

        written = write_shards(load_splits(cfg.data, cfg.train.seed), FLAGS.out, FLAGS.shards, _format(DATA_FORMATS),
                               FLAGS.validation_shards, source=cfg.data.kind)
        print(f"wrote {written['train_examples']} training and {written['validation_examples']} validation examples "
              f"({written['format']}) to {FLAGS.out}; metadata: {os.path.join(FLAGS.out, 'metadata.json')}")
        return
    if command == "plan":
        _start_tensorflow()
        from paradl_tf.api import plan
        from paradl_tf.runs.plan import format_plan

        print(format_plan(plan(cfg, link=FLAGS.link), as_json=FLAGS.json))
    elif command == "train":
        if not cfg.launches_local_cluster:  # a launcher only waits for its tasks: it needs no TensorFlow
            _start_tensorflow()
        from paradl_tf.api import train

        results = train(cfg)
        print(f"val_accuracy {results['val_accuracy']:.4f}, {results['examples_per_sec']:.0f} examples/s "
              f"on {results['runs_on']} with {results['keras']}")
        print(f"results: {os.path.join(cfg.output_dir, 'results.json')}")


def _format(choices: tuple[str, ...]) -> str:
    """--format for this command: one of `choices`, the first by default."""
    fmt = FLAGS.format or choices[0]
    if fmt not in choices:
        raise ParadlError(f"--format: {fmt!r} is not one of {', '.join(choices)}")
    return fmt


def _start_tensorflow() -> None:
    from paradl_tf.tf_logs import start_tensorflow

    start_tensorflow(show_logs=FLAGS.tf_logs)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _choices() -> str:
    names = list(COMMANDS)
    return ", ".join(names[:-1]) + " or " + names[-1]


# ================================================================ help
def usage(command: str | None = None) -> str:
    """`paradl-tf --help` (every command, one line each) or `paradl-tf COMMAND --help` (its flags and examples)."""
    if command is None:
        width = max(map(len, COMMANDS))
        lines = ["paradl-tf: parallel deep learning with TensorFlow/Keras, one YAML config per run.", "",
                 "usage: paradl-tf COMMAND [flags]", "", "commands:"]
        lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
        lines += ["", "examples:"] + [f"  {e}" for e in COMMANDS["train"].examples[:2] + COMMANDS["plan"].examples[:1]]
        lines += ["", "paradl-tf COMMAND --help shows a command's flags; --helpfull shows every absl flag.",
                  "Bad input prints one `error: ...` line and exits 2; --tf_logs shows TensorFlow's own log lines."]
        return "\n".join(lines) + "\n"
    c = COMMANDS[command]
    lines = [f"usage: paradl-tf {command} [flags]", "", c.summary, "", "flags:"]
    for name in c.flags:
        flag = FLAGS[name]
        default = "" if flag.default in (None, [], False) else f" (default: {flag.default_as_str})"
        text = flag.help.split(";\n")[0]  # absl appends "repeat this option ..." to a multi flag's help
        lines.append(f"  --{name:<17} {text}{default}")
    lines += ["", "examples:"] + [f"  {e}" for e in c.examples]
    return "\n".join(lines) + "\n"


def _parse_flags(argv: list[str]) -> list[str]:
    if any(arg in HELP_FLAGS for arg in argv[1:]):  # absl's own --help shows only the console script's usage
        words = " ".join(a for a in argv[1:] if not a.startswith("-"))
        named = [name for name in COMMANDS if words and (words == name or words.startswith(name + " ")
                                                         or name.startswith(words + " "))]
        sys.stdout.write(usage(named[0] if named else None))
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as exc:
        _fail(str(exc))


def run() -> None:
    """Console entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
