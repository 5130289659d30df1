"""Config loading: strict keys, typed values, one-line errors, overrides, provenance."""

import re
from pathlib import Path

import pytest

from paradl_tf.config import dump_config, load_config
from paradl_tf.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BAD = [
    ("train: {epoch: 3}", r"train\.epoch: unknown key 'epoch' in train; did you mean 'epochs'\?"),
    ("trian: {epochs: 3}", r"trian: unknown key 'trian' in the top level; did you mean 'train'\?"),
    ("strategy: {kind: mirrored, devicez: 2}", r"strategy\.devicez: unknown key 'devicez' in strategy; did you mean 'devices'\?"),
    ("train: {epochs: abc}", r"train\.epochs: input should be a valid integer\. Received: train\.epochs='abc' \(str\)"),
    ("train: {epochs: 2.5}", r"train\.epochs: input should be a valid integer\. Received: train\.epochs=2\.5 \(float\)"),
    ("train: {epochs: 0}", r"train\.epochs: input should be greater than 0\. Received: train\.epochs=0"),
    ("devices: {count: -2}", r"devices\.count: input should be greater than 0\. Received: devices\.count=-2"),
    ("strategy: {kind: mirroredd}", r"strategy\.kind: unknown strategy kind 'mirroredd'; choose one of: default, one_device, mirrored"),
    ("strategy: {devices: 2}", r"strategy\.kind is missing; choose one of: default, one_device, mirrored"),
    ("model: {kind: resnet}", r"model\.kind: unknown model kind 'resnet'; choose one of: mlp, cnn, inception, user"),
    ("data: {kind: mnist}", r"data\.kind: unknown data kind 'mnist'; choose one of: digits, synthetic_images, synthetic_tabular, user"),
    ("strategy: {kind: off}", r"strategy\.kind: unknown strategy kind False.*quote the value"),
    ("output_dir: no", r"output_dir: input should be a valid string\. Received: output_dir=False \(bool\).*quote the value"),
    ("devices: {count: 4}\nstrategy: {kind: mirrored, devices: 8}", r"strategy\.devices asks for 8 devices but only 4 logical CPU\(s\) exist"),
    ("strategy: {kind: mirrored, cross_device_ops: nccl}", r"strategy\.cross_device_ops: NCCL all-reduce needs GPUs, but devices\.type is CPU"),
    ("devices: {type: TPU}", r"devices\.type: input should be 'CPU' or 'GPU'\. Received: devices\.type='TPU'"),
    ("devices: {memory_limit_mb: 512}", r"devices\.memory_limit_mb applies to GPUs only"),
    ("train: [1, 2]", r"train: input should be a valid dictionary"),
    ("model: {kind: user, fn: not_a_path}", r"model\.fn: string should match pattern"),
    ("keras: keras2", r"keras: input should be 'auto', 'keras3' or 'tf_keras'\. Received: keras='keras2'"),
    ("- just\n- a list", r"the top level must be a mapping of sections, got list"),
    ("train: {epochs: 3\n", r"invalid YAML at line 2, column 1"),
    ("strategy: {kind: mirrored, devices: abc}", r"strategy\.devices: input should be a valid integer or a valid list"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_config_names_key_and_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": " + message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override,message", [
    ("train.epochs", r"--set expects key\.path=value\. Received: --set 'train\.epochs'"),
    ("=3", r"--set expects key\.path=value"),
    ("train..epochs=3", r"--set expects key\.path=value"),
    ("train.epochs=many", r"train\.epochs: input should be a valid integer\. Received: train\.epochs='many'"),
    ("train.batch=32", r"train\.batch: unknown key 'batch' in train; did you mean"),
])
def test_bad_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_are_typed_by_schema_and_win_over_file(tmp_path):
    path = write(tmp_path, "train: {epochs: 3, learning_rate: 0.1}\nstrategy: {kind: mirrored}\n")
    cfg = load_config(path, ["train.epochs=7", "devices.count=2", "strategy.devices=2", "output_dir=123", "model.hidden=[32, 16]"])
    assert cfg.train.epochs == 7
    assert cfg.strategy.devices == 2
    assert cfg.output_dir == "123"  # a string field keeps the text as typed
    assert cfg.model.hidden == [32, 16]
    assert cfg.train.learning_rate == 0.1


def test_provenance_says_where_each_value_came_from(tmp_path):
    path = write(tmp_path, "train: {epochs: 3}\nstrategy: {kind: mirrored}\n")
    cfg = load_config(path, ["train.seed=5"])
    assert cfg.provenance["train.epochs"] == "file"
    assert cfg.provenance["train.seed"] == "--set"
    assert cfg.provenance["train.global_batch_size"] == "default"
    assert cfg.provenance["strategy.kind"] == "file"
    assert cfg.provenance["strategy.cross_device_ops"] == "default"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["strategy.kind=mirrored", "train.epochs=2"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again.model_dump() == cfg.model_dump()


def test_defaults_alone_are_valid():
    cfg = load_config()
    assert cfg.strategy.kind == "default" and cfg.model.kind == "mlp" and cfg.data.kind == "digits"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert path.read_text().lstrip().startswith("#"), "each shipped config starts with a comment saying what it shows"


def test_cli_config_error_is_one_line_exit_2(cli, tmp_path):
    path = write(tmp_path, "train: {epoch: 3}")
    proc = cli("train", f"--config={path}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: train.epoch: unknown key 'epoch' in train; did you mean 'epochs'? " \
        "Valid keys: epochs, steps_per_epoch, global_batch_size, optimizer, learning_rate, seed, steps_per_execution, " \
        "precision, deterministic, tensorboard, verbose"
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--config=configs/nope.yaml"], "error: config file not found: configs/nope.yaml"),
    (["train", "--config=configs/sync_mirrored.yaml", "--set", "train.epochs=zero"], "error: configs/sync_mirrored.yaml: train.epochs: input should be a valid integer"),
    (["fly"], "error: expected one command, train, plan, serve, tf-config, export, data write or bench; got fly"),
    (["train", "--no_such_flag"], "error: Unknown command line flag 'no_such_flag'"),
])
def test_cli_errors_exit_2_without_traceback(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(message)
    assert "Traceback" not in proc.stderr


def test_docs_config_reference_is_current():
    from paradl_tf.config.reference import BEGIN, END, config_reference

    page = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    block = page[page.index(BEGIN) + len(BEGIN):page.index(END)].strip()
    assert block == config_reference(), "run: python -m paradl_tf.config.reference --update docs/configs.md"


def test_every_config_key_has_a_meaning():
    from paradl_tf.config.reference import config_reference

    undocumented = [row for row in config_reference().splitlines()[2:] if row.endswith("|  |")]
    assert not undocumented, undocumented
