"""The terminal carries the toolkit's own lines: one line per error, no TensorFlow log lines, help that helps,
and any config refused or accepted at once."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from paradl_tf.cli import COMMANDS
from paradl_tf.config import MAX_CONFIG_DEPTH, MAX_CONFIG_NODES, load_config
from paradl_tf.errors import ConfigError
from paradl_tf.tf_logs import TF_LOG_LINE

from conftest import ROOT

# What TensorFlow or absl would print: C++ log lines, absl's Python records (I1129 ... file.py:12] ...).
TF_LINE = re.compile(TF_LOG_LINE.pattern + r"|^[IWEF]\d{4} |oneDNN|cuda|cuInit|absl::InitializeLog")


def plain_cli(*args, timeout=240):
    """`paradl-tf ARGS` as a user runs it: TF_CPP_MIN_LOG_LEVEL unset (the suite sets it for itself)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "paradl_tf.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.timeout(120)
def test_a_failure_after_tensorflow_starts_is_one_line():
    proc = plain_cli("plan", "--config=configs/sync_mirrored.yaml", "--set", "devices.type=GPU")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: devices.type is GPU but TensorFlow sees no GPU; use devices.type: CPU or run where a GPU is visible"
    ]


@pytest.mark.timeout(240)
def test_plan_and_train_print_no_tensorflow_log_line(tmp_path):
    plan = plain_cli("plan", "--config=configs/sync_mirrored.yaml")
    train = plain_cli("train", "--config=configs/sync_mirrored.yaml", "--set", "train.epochs=1",
                      "--set", f"output_dir={tmp_path}")
    for proc in (plan, train):
        assert proc.returncode == 0, proc.stderr
        assert not [ln for ln in (proc.stdout + proc.stderr).splitlines() if TF_LINE.search(ln)]
    assert "Using MirroredStrategy" not in train.stderr
    assert train.stdout.splitlines()[-1] == f"results: {tmp_path}/results.json"


@pytest.mark.timeout(120)
def test_tf_logs_flag_brings_tensorflow_lines_back():
    proc = plain_cli("plan", "--config=configs/sync_mirrored.yaml", "--tf_logs")
    assert proc.returncode == 0, proc.stderr
    assert "Using MirroredStrategy with devices" in proc.stderr


def test_tensorflow_that_fails_to_start_shows_its_log(monkeypatch, capfd):
    """A broken install explains itself: what TensorFlow wrote while loading comes back, then one error."""
    from paradl_tf import tf_logs

    def broken_import(name, *args, **kwargs):
        if name == "tensorflow":
            os.write(2, b"E0000 00:00:1.0 1 loader.cc:1] libtensorflow_framework.so.2: cannot open shared object\n")
            raise ImportError("libtensorflow_framework.so.2 not found")
        return real_import(name, *args, **kwargs)

    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__
    monkeypatch.setattr("builtins.__import__", broken_import)
    with pytest.raises(tf_logs.ParadlError, match=r"^TensorFlow failed to start \(ImportError: libtensorflow"):
        tf_logs.start_tensorflow()
    assert "loader.cc:1] libtensorflow_framework.so.2: cannot open" in capfd.readouterr().err


def test_tensorflow_lines_written_during_a_run_are_dropped_and_the_rest_kept(capfd):
    from paradl_tf.tf_logs import without_tensorflow_lines

    with without_tensorflow_lines():
        os.write(2, b"E0000 00:00:1796541260.387560    9507 ring_alg.cc:291] Aborting RingReduce with CANCELLED\n")
        os.write(2, b"a warning of the run\n")
    assert capfd.readouterr().err == "a warning of the run\n"


@pytest.mark.timeout(60)
def test_help_lists_every_command_with_an_example():
    proc = plain_cli("--help")
    assert proc.returncode == 0
    for name, command in COMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(command.summary)}$", proc.stdout, re.M), name
    assert "paradl-tf train --config=configs/sync_mirrored.yaml" in proc.stdout
    assert "--helpfull" in proc.stdout and "USAGE: " not in proc.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_gives_its_flags_and_examples(name):
    proc = plain_cli(name, "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"usage: paradl-tf {name} [flags]")
    for flag in COMMANDS[name].flags:
        assert f"  --{flag} " in proc.stdout
    for example in COMMANDS[name].examples:
        assert example in proc.stdout
    # Only its own words: no flag text or default of another command (absl's flags are global; the help is not).
    flags_part = proc.stdout.split("\nflags:\n")[1].split("\nexamples:\n")[0]
    assert flags_part.count("\n  --") + 1 == len(COMMANDS[name].flags), flags_part
    for other, command in COMMANDS.items():
        if other == name:
            continue
        # another command named (not a config key such as train.epochs)
        assert not re.search(rf"(?<![\w.-]){re.escape(other)}(?![\w.-])", flags_part), (other, flags_part)
        for flag, text in command.flags.items():
            if COMMANDS[name].flags.get(flag) != text:
                assert text not in proc.stdout, (other, flag)
            if flag in command.defaults and command.defaults[flag] != COMMANDS[name].defaults.get(flag):
                assert f"--{flag}" not in flags_part or f"(default: {command.defaults[flag]!r})" not in flags_part


# ================================================================ configs refused at once
def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BILLION_LAUGHS = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.timeout(10)  # a hang guard: before the check this file kept `plan` busy for over 60 s
@pytest.mark.parametrize("text,message", [
    (BILLION_LAUGHS, rf"YAML expands to more than {MAX_CONFIG_NODES} nodes"),
    ("a: [" + ", ".join(["{x: 1}"] * MAX_CONFIG_NODES) + "]\n", rf"YAML expands to more than {MAX_CONFIG_NODES} nodes"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", rf"YAML nested deeper than {MAX_CONFIG_DEPTH} levels"),
    ("# " + "x" * 300_000 + "\n", r"config file is larger than 256 KiB"),
    ("", r"config file is empty; a truncated file or a wrong path\?"),
    ("\n  \n", r"config file is empty"),
    ("# only a comment\n", r"config file holds no settings"),
], ids=["aliases", "wide", "deep", "large", "empty", "blank", "comment"])
def test_configs_beyond_the_limits_are_refused_in_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}") as exc:
        load_config(path)
    assert "\n" not in str(exc.value)


def test_aliases_within_the_limits_still_load(tmp_path):
    path = write(tmp_path, """\
        model: &mlp {kind: mlp, hidden: [32, 16]}
        train: {epochs: 2}
        """)
    assert load_config(path).model.hidden == [32, 16]


@pytest.mark.timeout(60)
def test_cli_refuses_an_empty_config_with_one_line(tmp_path):
    path = write(tmp_path, "")
    proc = plain_cli("train", f"--config={path}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {path}: config file is empty; a truncated file or a wrong path? "
                                        "(for all defaults, give no --config)"]


@pytest.mark.timeout(60)
def test_a_flag_of_another_command_is_refused_not_ignored():
    """absl's flags are global, so `train --link=1Gbit` would parse: it names the flag and what train takes."""
    proc = plain_cli("train", "--config=configs/sync_mirrored.yaml", "--link=1Gbit")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: --link is not a flag of `paradl-tf train`; it takes --config, --set, "
                                        "--tf_logs (see paradl-tf train --help)"]
