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

import contextlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from absl import app, flags

from paradl_tf.errors import ParadlError, ParadlWarning

_PYTHON_FORMATWARNING = warnings.formatwarning

FLAGS = flags.FLAGS
# absl's flags are global: each is defined once here, for the parser, and each command gives the flags it takes
# their words and defaults in COMMANDS below, so that `paradl-tf COMMAND --help` speaks of that command alone.
_PER_COMMAND = "this flag's meaning and default depend on the command: see paradl-tf COMMAND --help"
for _name in ("config", "job", "out", "format", "image", "cpu", "memory", "checkpoint_claim", "link",
              "compute"):
    flags.DEFINE_string(_name, None, _PER_COMMAND)
for _name in ("task", "gpus"):
    flags.DEFINE_integer(_name, None, _PER_COMMAND, lower_bound=0)
for _name in ("tf_logs", "json", "quick", "virtual_gpus", "tiny"):
    flags.DEFINE_bool(_name, False, _PER_COMMAND)
for _name in ("parts", "methods"):
    flags.DEFINE_list(_name, None, _PER_COMMAND)
flags.DEFINE_multi_string("set", [], _PER_COMMAND)
flags.DEFINE_list("hosts", [], _PER_COMMAND)
flags.DEFINE_integer("shards", None, _PER_COMMAND, lower_bound=1)
flags.DEFINE_integer("validation_shards", None, _PER_COMMAND, lower_bound=1)
flags.DEFINE_integer("reps", None, _PER_COMMAND, lower_bound=1)
flags.DEFINE_string("command", None, _PER_COMMAND)
_TOOLKIT_FLAGS = tuple(flag.name for flag in FLAGS.get_flags_for_module(__name__))
"""The flags defined above (absl's own, such as --verbosity, are not a command's)."""
EXPORT_FORMATS = ("tfjob", "jobset", "indexed-job", "slurm")
DATA_FORMATS = ("tfrecord", "image_folder", "csv")

CONFIG = "YAML config file describing the run."
SET = "Override a config key, e.g. --set train.epochs=3 (repeatable)."
TF_LOGS = "Show TensorFlow's own log lines (C++ start-up lines, INFO records) for debugging."


@dataclass(frozen=True)
class Command:
    summary: str
    flags: dict[str, str]
    """Each flag the command takes, with what it means here."""
    examples: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    """The command's defaults for its flags (absl's are the same for every command)."""

    def value(self, name: str):
        """The flag's value as given, else this command's default."""
        return FLAGS[name].value if FLAGS[name].present else self.defaults.get(name, FLAGS[name].default)


COMMANDS = {
    "train": Command(
        "Train with model.fit as the config says; writes config.yaml, results.json (and the model) to output_dir.",
        {"config": CONFIG, "set": SET, "tf_logs": TF_LOGS},
        ("paradl-tf train --config=configs/sync_mirrored.yaml",
         "paradl-tf train --config=configs/sync_mirrored.yaml --set train.epochs=3 --set strategy.devices=2",
         "paradl-tf train --config=configs/async_ps.yaml          # parameter servers: 2 workers, 1 ps, local",
         "paradl-tf train --config=configs/sync_multiworker.yaml  # MultiWorkerMirroredStrategy: 2 processes"),
    ),
    "plan": Command(
        "Show devices, replicas, the batch split, variables and where each value came from; trains nothing.",
        {"config": CONFIG, "set": SET, "json": "Print JSON instead of text.",
         "link": "A link bandwidth, e.g. 25Gbit or 100Mbit: add the bytes and seconds each step sends over such "
                 "links (all-reduce, ps traffic, activations between stages) next to a compute time measured here.",
         "compute": "Where --link's compute time per step is measured: device (one step of the model on one device "
                    "here, seconds) or cluster (multi_worker_mirrored, parameter_server: the config's cluster "
                    "trained briefly here on loopback, so the runtime's own per-step cost counts; tens of seconds).",
         "tf_logs": TF_LOGS},
        ("paradl-tf plan --config=configs/sync_mirrored.yaml",
         "paradl-tf plan --config=configs/model_parallel.yaml --json",
         "paradl-tf plan --config=configs/sync_multiworker.yaml --link=25Gbit   # will the network dominate?",
         "paradl-tf plan --config=configs/async_ps.yaml --link=100Mbit --compute=cluster"),
        defaults={"compute": "device"},
    ),
    "serve": Command(
        "Run one task of a cluster (worker, ps, or a tf.data service's dispatcher or data_worker) until stopped "
        "or its chief has gone.",
        {"job": "The job of the task to run: worker, ps, dispatcher or data_worker; default: TF_CONFIG's task.",
         "task": "The index of the task to run; default: TF_CONFIG's task.",
         "config": "YAML config of the run, where no TF_CONFIG is set: its cluster section finds the tasks.",
         "set": SET, "tf_logs": TF_LOGS},
        ("TF_CONFIG='{\"cluster\": {...}, \"task\": {\"type\": \"ps\", \"index\": 0}}' paradl-tf serve",
         "TF_CONFIG='{\"cluster\": {\"dispatcher\": [\"h0:5050\"], \"data_worker\": [\"h1:5051\"]}}' "
         "paradl-tf serve --job=data_worker --task=0",
         "paradl-tf serve --config=configs/async_ps.yaml --set cluster.resolver=slurm   # in an sbatch step"),
    ),
    "tf-config": Command(
        "Print the TF_CONFIG of every task of a multi-host run, given its hosts.",
        {"config": CONFIG, "set": SET,
         "hosts": "The hosts of the cluster, one task each ('host' or 'host:port'), in order chief, workers, ps."},
        ("paradl-tf tf-config --config=configs/sync_multiworker.yaml --hosts=10.0.0.1,10.0.0.2",),
    ),
    "export": Command(
        "Write what launches the config on a cluster: a JobSet, an Indexed Job, a Kubeflow TFJob or an sbatch script.",
        {"config": CONFIG, "set": SET,
         "format": "tfjob (a Kubeflow TFJob; needs the legacy operator), jobset, indexed-job (an Indexed Job and "
                   "headless Service; multi-worker) or slurm (an sbatch script).",
         "image": "Kubernetes: the container image with paradl-tf installed.",
         "command": "The command that runs paradl-tf on a node or in a pod.",
         "cpu": "Kubernetes: CPU each pod requests, e.g. 4.",
         "memory": "Kubernetes: memory each pod requests and is limited to, e.g. 16Gi.",
         "gpus": "Kubernetes: nvidia.com/gpu per worker pod; default 1 where devices.type is GPU, else none.",
         "checkpoint_claim": "Kubernetes: a ReadWriteMany PersistentVolumeClaim mounted on checkpoint.dir's parent "
                             "in every pod that trains, so a restarted run resumes."},
        ("paradl-tf export --config=configs/sync_multiworker.yaml --format=jobset --image=registry/paradl:1 > jobset.yaml",
         "paradl-tf export --config=configs/sync_multiworker.yaml --format=indexed-job --image=registry/paradl:1 > job.yaml",
         "paradl-tf export --config=configs/async_ps.yaml --format=slurm > job.sbatch"),
        defaults={"format": EXPORT_FORMATS[0], "command": "paradl-tf"},
    ),
    "data write": Command(
        "Write the config's in-memory data (digits, synthetic, a user's arrays) as TFRecord, image-folder or CSV shards.",
        {"config": CONFIG, "set": SET,
         "out": "The directory to write the shards and metadata.json to: a new or empty one (required).",
         "shards": "Training files to write.", "validation_shards": "Validation files to write.",
         "format": "tfrecord, image_folder or csv.", "tf_logs": TF_LOGS},
        ("paradl-tf data write --config=configs/sync_mirrored.yaml --out=runs/digits_tfrecord --shards=4",
         "paradl-tf train --config=configs/tfrecord_multiworker.yaml   # then train on the shards"),
        defaults={"shards": 4, "validation_shards": 1, "format": DATA_FORMATS[0]},
    ),
    "bench": Command(
        "Measure every method against one device and hand-written tf.distribute; writes results.json, RESULTS.md, plots.",
        {"quick": "Fewer repetitions, methods and points (under 19 minutes on 2 cores, the data and network parts "
                   "included).",
         "out": "The directory for results.json, RESULTS.md and the plots.",
         "parts": "Which parts to measure, each on its own time budget: main (every method against its "
                  "hand-written and tutorial-style code), tutorials (the cluster methods against TensorFlow's "
                  "tutorial-style code at the same time, each side pinned to half the CPUs; full mode), sections "
                  "(precision, threads), sweeps (batch, width), data (files against memory), network (sync "
                  "against async on emulated hosts: slow links, a straggler; root); default: all six.",
         "methods": "Only these methods in the main table and the tutorials part (e.g. "
                    "multi_worker_mirrored_2,parameter_server); default: all.",
         "reps": "Processes per figure of the main table (default: the mode's, 3 in full, 1 in --quick): more "
                 "processes narrow a ratio whose processes differ, as a local cluster's do on 2 shared cores; "
                 "the main table's time budget grows with them.",
         "virtual_gpus": "On a GPU machine, split GPU 0 into logical GPUs for multi-device methods.",
         "tiny": "Tiny models and concurrent processes, for tests; the speeds mean nothing.",
         "tf_logs": TF_LOGS},
        ("paradl-tf bench --quick --out=/tmp/bench", "paradl-tf bench   # the full run, under 206 minutes on 2 cores",
         "paradl-tf bench --parts=sections --out=/tmp/bench   # precision and threads only",
         "paradl-tf bench --parts=main --methods=parameter_server --reps=8 --out=/tmp/ps   # one row, 8 processes"),
        defaults={"out": "bench"},
    ),
}
HELP_FLAGS = ("--help", "-h", "-help", "--helpshort", "-?")


def main(argv: list[str]) -> None:
    command = " ".join(argv[1:])
    if command not in COMMANDS:
        _fail(f"expected one command, {_choices()}; got {command or 'nothing'}. See paradl-tf --help")
    # absl's flags are global: a flag of another command would parse, and be silently ignored here.
    foreign = [name for name in _TOOLKIT_FLAGS if FLAGS[name].present and name not in COMMANDS[command].flags]
    if foreign:
        _fail(f"--{foreign[0]} is not a flag of `paradl-tf {command}`; it takes "
              f"{', '.join('--' + name for name in COMMANDS[command].flags)} (see paradl-tf {command} --help)")
    warnings.formatwarning = _warning_line
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
        from paradl_tf.config import ClusterConfig, load_config

        cfg = load_config(FLAGS.config, FLAGS.set) if FLAGS.config else None  # validated before TensorFlow starts
        environ = os.environ
        if cfg and "TF_CONFIG" not in os.environ:
            _start_tensorflow()  # the resolvers are TensorFlow's
            required = REQUIRED_JOBS.get(cfg.strategy.kind, ())
            environ = {**os.environ, "TF_CONFIG": resolver_tf_config(cfg.cluster, required)}
        serve(FLAGS.job, FLAGS.task, environ, (cfg.cluster if cfg else ClusterConfig()).chief_gone_s, FLAGS.tf_logs)
        return
    if command == "bench":  # no run config: the benchmark builds one per measurement
        if importlib.util.find_spec("matplotlib") is None:
            raise ParadlError("paradl-tf bench needs its extra for the plots: pip install 'paradl_tf[bench]'")
        from paradl_tf.benchmark.parts import PARTS, check_selection
        from paradl_tf.benchmark.run import run_bench

        parts = PARTS if FLAGS.parts is None else FLAGS.parts
        check_selection(parts, FLAGS.methods)  # before TensorFlow starts
        _start_tensorflow()
        run_bench(quick=FLAGS.quick, out_dir=COMMANDS["bench"].value("out"), tiny=FLAGS.tiny, virtual_gpus=FLAGS.virtual_gpus,
                  parts=parts, methods=FLAGS.methods, reps=FLAGS.reps)
        return
    from paradl_tf.config import load_config

    cfg = load_config(FLAGS.config, FLAGS.set)  # validated before TensorFlow starts
    if command in ("tf-config", "export"):  # what a multi-host run needs, from the config alone
        from paradl_tf.cluster import deploy

        if command == "export":
            fmt = _format(EXPORT_FORMATS, COMMANDS["export"].value("format"))
            print(deploy.export(cfg, fmt, FLAGS.config, FLAGS.image, COMMANDS["export"].value("command"), FLAGS.set, cpu=FLAGS.cpu,
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

        command = COMMANDS["data write"]
        written = write_shards(load_splits(cfg.data, cfg.train.seed), FLAGS.out, command.value("shards"),
                               _format(DATA_FORMATS, command.value("format")), command.value("validation_shards"),
                               source=cfg.data.kind)
        print(f"wrote {written['train_examples']} training and {written['validation_examples']} validation examples "
              f"({written['format']}) to {FLAGS.out}; metadata: {os.path.join(FLAGS.out, 'metadata.json')}")
        return
    if command == "plan":
        from paradl_tf.runs.communication import check_compute, parse_bandwidth

        if FLAGS.link:
            parse_bandwidth(FLAGS.link)  # a bad --link is one line before TensorFlow takes seconds to start
        compute = COMMANDS["plan"].value("compute")
        check_compute(cfg.strategy.kind, compute, FLAGS.link)
        _start_tensorflow()
        from paradl_tf.api import plan
        from paradl_tf.runs.plan import format_plan

        print(format_plan(plan(cfg, link=FLAGS.link, compute=compute), as_json=FLAGS.json))
    elif command == "train":
        if not cfg.launches_local_cluster:  # a launcher only waits for its tasks: it needs no TensorFlow
            _start_tensorflow()
        from paradl_tf.api import train
        from paradl_tf.tf_logs import without_tensorflow_lines

        with contextlib.nullcontext() if FLAGS.tf_logs else without_tensorflow_lines():
            results = train(cfg)
        print(f"val_accuracy {results['val_accuracy']:.4f}, {results['examples_per_sec']:.0f} examples/s "
              f"on {results['runs_on']} with {results['keras']}")
        print(f"results: {os.path.join(cfg.output_dir, 'results.json')}")


def _format(choices: tuple[str, ...], fmt: str) -> str:
    """--format for this command: one of `choices`."""
    if fmt not in choices:
        raise ParadlError(f"--format: {fmt!r} is not one of {', '.join(choices)}")
    return fmt


def _start_tensorflow() -> None:
    from paradl_tf.tf_logs import start_tensorflow

    start_tensorflow(show_logs=FLAGS.tf_logs)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """The toolkit's own warnings as one `warning: ...` line, as errors are shown; the file and source line that
    raised one mean nothing to a user of the CLI. Other libraries' warnings as Python shows them."""
    if issubclass(category, ParadlWarning):
        return f"warning: {message}\n"
    return _PYTHON_FORMATWARNING(message, category, filename, lineno, line)


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
    for name, text in c.flags.items():
        default = c.defaults.get(name)
        lines.append(f"  --{name:<19} {text}{'' if default is None else f' (default: {default!r})'}")
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
