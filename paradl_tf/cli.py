"""paradl-tf: train or inspect a run described by a YAML config.

    paradl-tf train --config=configs/sync_mirrored.yaml                  # MirroredStrategy over 4 virtual CPUs
    paradl-tf train --config=configs/sync_mirrored.yaml --set train.epochs=3 --set strategy.devices=2
    paradl-tf train --config=configs/one_device.yaml                     # the single-device baseline
    paradl-tf plan --config=configs/sync_mirrored.yaml [--json]          # devices, replicas, variables; no training

Bad input prints `error: ...` to stderr and exits with status 2.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from paradl_tf.errors import ParadlError

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "YAML config file describing the run.")
flags.DEFINE_multi_string("set", [], "Override a config key, e.g. --set train.epochs=3 (repeatable).")
flags.DEFINE_bool("json", False, "plan: print JSON instead of text.")

COMMANDS = ("train", "plan")


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        given = " ".join(argv[1:]) or "nothing"
        _fail(f"expected one command, {' or '.join(COMMANDS)}; got {given}. See paradl-tf --help")
    try:
        _run(argv[1])
    except ParadlError as exc:
        _fail(str(exc))


def _run(command: str) -> None:
    from paradl_tf.config import load_config

    cfg = load_config(FLAGS.config, FLAGS.set)  # validated before TensorFlow starts
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if command == "plan":
        from paradl_tf.planning import format_plan, plan

        print(format_plan(plan(cfg), as_json=FLAGS.json))
    elif command == "train":
        from paradl_tf.training import train

        results = train(cfg)
        print(
            f"val_accuracy {results['val_accuracy']:.4f}, {results['examples_per_sec']:.0f} examples/s "
            f"on {results['replicas']} replica(s) with {results['keras']}"
        )
        print(f"results: {os.path.join(cfg.output_dir, 'results.json')}")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as exc:
        _fail(str(exc))


def run() -> None:
    """Console entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
