"""`plan --link`: the communication cost models (pure) and what plan predicts from a real plan of each kind."""

import json

import pytest

from paradl_tf.config import load_config
from paradl_tf.errors import ConfigError
from paradl_tf.runs.communication import (check_compute, format_bandwidth, parse_bandwidth, predict,
                                          ring_all_reduce_bytes)

from conftest import ROOT


@pytest.mark.parametrize("text, bits", [("25Gbit", 25e9), ("100Mbit", 1e8), ("10mbit/s", 1e7), ("1.5Gbps", 1.5e9),
                                        ("800kbit", 8e5), ("64 bit", 64)])
def test_bandwidths_read_as_tc_writes_them(text, bits):
    assert parse_bandwidth(text) == pytest.approx(bits)
    assert parse_bandwidth(format_bandwidth(bits)) == pytest.approx(bits)


@pytest.mark.parametrize("text", ["fast", "25GB", "0Mbit", "-1Gbit", ""])
def test_a_bandwidth_that_cannot_be_read_names_the_flag_and_the_form(text):
    with pytest.raises(ConfigError, match=r"^--link: cannot read .* e\.g\. 25Gbit"):
        parse_bandwidth(text)


def test_ring_all_reduce_sends_2_n_minus_1_over_n_of_the_gradients():
    assert ring_all_reduce_bytes(1000, 1) == 0
    assert ring_all_reduce_bytes(1000, 2) == 1000
    assert ring_all_reduce_bytes(1000, 4) == 1500


def _plan(strategy, **keys):
    return {"strategy": strategy, "replicas": 1, "global_batch_size": 64, "gradient_bytes": 4000,
            "parameter_bytes": 4400, **keys}


def test_multi_worker_prediction_is_the_ring_over_the_worker_hosts():
    p = _plan("multi_worker_mirrored", cluster={"tasks": {"worker": ["a:1", "b:1", "c:1", "d:1"]}})
    c = predict(p, 1e6, compute_s=0.010)
    (item,) = c["items"]
    assert item["bytes_per_step"] == 6000  # 2 * 3/4 * 4000
    assert item["seconds_per_step"] == pytest.approx(6000 * 8 / 1e6)
    assert c["communication_share"] == pytest.approx(0.048 / 0.058)


def test_parameter_server_prediction_pulls_variables_pushes_gradients_and_loads_the_busiest_ps():
    p = _plan("parameter_server", cluster={"tasks": {"worker": ["a:1", "b:1"], "ps": ["c:1", "d:1"]}},
              ps_bytes={"ps0": 3300, "ps1": 1100})
    worker_link, ps_link = predict(p, 1e6)["items"]
    assert worker_link["bytes_per_step"] == 8400 and worker_link["on_step"]
    # two workers, each step through the ps that holds 3/4 of the bytes, pulls and pushes at once (full duplex):
    # a bound on the cluster, not on one step
    assert ps_link["bytes_per_step"] == pytest.approx(2 * 0.75 * max(4400, 4000)) and not ps_link["on_step"]
    assert predict(p, 1e6)["communication_seconds_per_step"] == pytest.approx(8400 * 8 / 1e6)


def test_model_parallel_prediction_sends_activations_forward_and_gradients_back():
    stages = [{"sends_bytes_per_example": 256}, {"sends_bytes_per_example": 128}, {"sends_bytes_per_example": 0}]
    (item,) = predict(_plan("model_parallel", placement={"stages": stages}), 1e9)["items"]
    assert item["bytes_per_step"] == 2 * 64 * 384


def test_one_device_sends_nothing():
    c = predict(_plan("one_device"), 1e9, compute_s=0.002)
    assert c["items"] == [] and c["communication_share"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("config, strategy", [("sync_multiworker.yaml", "multi_worker_mirrored"),
                                              ("async_ps.yaml", "parameter_server"),
                                              ("hybrid.yaml", "hybrid")])
def test_plan_with_a_link_predicts_each_step_from_the_real_plan(config, strategy):
    from paradl_tf.api import plan

    p = plan(load_config(ROOT / "configs" / config, ["devices.count=4"]), link="100Mbit")  # conftest's 4 CPUs
    c = p["communication"]
    assert p["strategy"] == strategy and c["link"] == "100Mbit"
    assert c["compute_seconds_per_step"] > 0 and "measured here" in c["compute_source"]
    assert c["items"] and all(i["seconds_per_step"] == pytest.approx(i["bytes_per_step"] * 8 / 1e8)
                              for i in c["items"])
    if strategy == "multi_worker_mirrored":
        assert c["items"][0]["bytes_per_step"] == p["all_reduce"]["bytes_per_step"]  # 2 workers: 2(n-1)/n = 1
    if strategy == "hybrid":
        largest = max(s["all_reduce_bytes_per_step"] for s in p["placement"]["stages"])
        assert c["items"][0]["bytes_per_step"] == ring_all_reduce_bytes(largest, p["placement"]["replicas"])


@pytest.mark.parametrize("strategy, compute, link, error", [
    ("parameter_server", "gpu", "1Gbit", "--compute: 'gpu' is not one of device, cluster"),
    ("parameter_server", "cluster", None, "--compute=cluster: the compute time is measured for --link alone; give "
                                          "--link too"),
    ("mirrored", "cluster", "1Gbit", "--compute=cluster: strategy.kind=mirrored runs in one process, with no "
                                     "cluster to run; use --compute=device"),
])
def test_a_compute_source_that_cannot_be_measured_is_refused(strategy, compute, link, error):
    with pytest.raises(ConfigError) as exc:
        check_compute(strategy, compute, link)
    assert str(exc.value) == error


@pytest.mark.timeout(240)
def test_plan_measures_the_compute_in_the_configs_own_cluster(tmp_path):
    """--compute=cluster: the parameter-server config's cluster (2 workers, 1 ps) trains on loopback for a few
    epochs; a worker's step is the cluster's time per step times its 2 workers, and nothing of the run is left."""
    import psutil

    from paradl_tf.api import plan

    p = plan(load_config(ROOT / "configs" / "async_ps.yaml", ["devices.count=4", f"output_dir={tmp_path / 'run'}"]),
             link="10Mbit", compute="cluster")
    c = p["communication"]
    assert c["compute_source"].startswith("measured here: the config's cluster (2 worker(s), 1 ps) on loopback")
    assert c["compute_source"].endswith("times 2 workers") and c["compute_seconds_per_step"] > 0
    assert c["step_seconds"] == pytest.approx(c["compute_seconds_per_step"] + c["communication_seconds_per_step"])
    # A temporary output dir, not the config's; every task ended.
    assert not (tmp_path / "run").exists() and not psutil.Process().children(recursive=True)


@pytest.mark.timeout(240)
def test_plan_link_from_the_cli(cli):
    done = cli("plan", "--config=configs/sync_mirrored.yaml", "--link=25Gbit", "--json")
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)["communication"]
    assert c["link"] == "25Gbit" and c["items"][0]["formula"] == "2(n-1)/n * S / B"
    text = cli("plan", "--config=configs/sync_mirrored.yaml", "--link=25Gbit").stdout
    assert "communication over 25Gbit links" in text and "of the step" in text
    bad = cli("plan", "--config=configs/sync_mirrored.yaml", "--link=fast")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --link: cannot read 'fast' as a bandwidth; give bits per second with a unit, e.g. 25Gbit, "
        "100Mbit or 10Mbit"]
    wrong = cli("plan", "--config=configs/sync_mirrored.yaml", "--link=25Gbit", "--compute=cluster")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "error: --compute=cluster: strategy.kind=mirrored runs in one process, with no cluster to run; use "
        "--compute=device"]
