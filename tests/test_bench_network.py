"""The bench's network part without TensorFlow: its configs on emulated hosts, the straggler calibration's choice,
the models beside each row and plan --link's share against the measured one, and the tables. (One tiny run of
the part on emulated hosts is in test_bench.py's run of the whole bench.)"""

import pytest

from paradl_tf.benchmark.figures import stat
from paradl_tf.benchmark.modes import MODES
from paradl_tf.benchmark.parts import PARTS
from paradl_tf.benchmark.parts import network as net
from paradl_tf.benchmark.report.network import network_tables
from paradl_tf.benchmark.specs import config_error

S = 68_904  # the digits MLP's gradient bytes
BATCH = 64
PS_PLAN = {"strategy": "parameter_server", "gradient_bytes": S, "parameter_bytes": S, "ps_bytes": {"ps:0": S},
           "cluster": {"tasks": {"worker": ["n2:8888", "n3:8888"]}},
           "communication": {"compute_seconds_per_step": 0.004, "communication_share": 0.5,
                             "communication_seconds_per_step": 0.011}}
SYNC_PLAN = {"strategy": "multi_worker_mirrored", "gradient_bytes": S, "cluster": {"tasks": {"worker": ["n1", "n2"]}},
             "communication": {"compute_seconds_per_step": 0.004, "communication_share": 0.6,
                               "communication_seconds_per_step": 0.0055}}


def _row(method, x, step_s, plans=(), **about):
    return {"workload": "mlp", "method": method, "x": x, "status": "ok", "global_batch_size": BATCH,
            "examples_per_sec": stat([BATCH / step_s]), "step_seconds": stat([step_s]),
            "plans": list(plans), **about}


def test_the_part_is_registered_with_its_own_budget_and_its_configs_validate():
    assert PARTS["network"].entry  # results.json["network"]: the models beside the measurements
    mode = MODES["quick"]
    for method in (net.SYNC, net.ASYNC):
        cfg = net.host_config(mode, net.PLANS["quick"], mode.workloads["mlp"], method, links={"bandwidth_mbit": 10})
        assert config_error(cfg) is None
        slowed = net._slowed(cfg, "worker:1", "cpu", 0.25)
        # The slow worker's own host: n2 of [worker:0, worker:1]; n3 of [chief:0, worker:0, worker:1, ps:0].
        host = "n3" if method == net.ASYNC else "n2"
        assert slowed["cluster"]["hosts"]["per_host"] == {host: {"cpu_share": 0.25}}
        assert config_error(slowed) is None


def test_calibration_picks_the_setting_whose_measured_slowdown_is_nearest():
    points = [{"by": "cpu", "setting": 0.5, "s": 1.3}, {"by": "cpu", "setting": 0.25, "s": 2.4},
              {"by": "cpu", "setting": 0.12, "s": 5.5}, {"by": "link", "setting": 3.0, "s": None}]
    assert net.choose(points, "cpu", 2)["setting"] == 0.25
    assert net.choose(points, "cpu", 4)["setting"] == 0.12  # log scale: 5.5/4 is nearer than 4/2.4
    assert net.choose(points, "link", 2) is None  # its run failed: no measured s


def test_link_models_add_the_ring_or_the_ps_traffic_to_the_unshaped_compute():
    base = _row(net.SYNC, "unshaped", 0.004, kind="links", bandwidth_mbit=None)
    slow = _row(net.SYNC, "10Mbit", 0.1, [SYNC_PLAN], kind="links", bandwidth_mbit=10)
    model = net.link_model(slow, base, SYNC_PLAN)
    assert model["step_seconds"] == pytest.approx(0.004 + S * 8 / 10e6)  # 2(n-1)/n * S / B with n = 2
    point = net._point(slow, model)
    assert point["measured_over_model"] == pytest.approx(model["step_seconds"] / 0.1)
    assert point["within"] is False
    # Parameter servers: a worker runs every other step whole. The ps link is full duplex: 2 workers' pulls go
    # out while their pushes come in, which takes no longer than a worker's own pull and push, so the worker's
    # step (compute, pull, push) bounds the cluster.
    base = _row(net.ASYNC, "unshaped", 0.002, kind="links", bandwidth_mbit=None)
    slow = _row(net.ASYNC, "10Mbit", 0.1, [PS_PLAN], kind="links", bandwidth_mbit=10)
    model = net.link_model(slow, base, PS_PLAN)
    worker = 0.004 + 2 * S * 8 / 10e6
    assert model["ps_link_seconds"] == pytest.approx(2 * S * 8 / 10e6) and model["ps_link_seconds"] < worker
    assert model["step_seconds"] == pytest.approx(worker / 2)
    assert net.link_model(base, base, PS_PLAN)["applies"] is False  # the reference point has no model of its own


def test_straggler_models_sync_one_over_s_async_the_others_go_on():
    base = _row(net.SYNC, "unshaped", 0.01, kind="links", bandwidth_mbit=None)
    sync = net.straggler_model(_row(net.SYNC, "cpu s=4", 0.04, by="cpu", s=4.0, setting=0.12), base, SYNC_PLAN)
    assert sync["examples_per_sec"] == pytest.approx(BATCH / 0.01 / 4)
    asyn = net.straggler_model(_row(net.ASYNC, "cpu s=4", 0.01, by="cpu", s=4.0, setting=0.12),
                               {**base, "method": net.ASYNC}, PS_PLAN)
    assert asyn["examples_per_sec"] == pytest.approx(BATCH / 0.01 * 0.625)
    ring = net.straggler_model(_row(net.SYNC, "link s=4", 0.05, by="link", s=4.0, setting=2.0), base, SYNC_PLAN)
    assert ring["step_seconds"] == pytest.approx(0.01 + S * 8 / 2e6) and "slowest link" in ring["formula"]
    assert net.straggler_model(_row(net.SYNC, "cpu s=4", 0.04, by="cpu", s=None), base, None)["applies"] is False


def test_plan_share_against_the_measured_share_and_the_tables():
    base = _row(net.SYNC, "unshaped", 0.004, kind="links", bandwidth_mbit=None)
    at10 = _row(net.SYNC, "10Mbit", 0.01, [SYNC_PLAN], kind="links", bandwidth_mbit=10)
    check = net.plan_share(at10, base)
    assert check["measured_share"] == pytest.approx(0.6) and check["predicted_share"] == 0.6 and check["within"]
    entry = {"status": "ok", "tolerance": 0.25, "val_targets": net.VAL_TARGETS, "hybrid": net.HYBRID,
             "calibration": {"mlp": {"points": [], "chosen": {}}}, **net.compare([base, at10])}
    assert [p["x"] for p in entry["links"]] == ["unshaped", "10Mbit"] and len(entry["plan_check"]) == 1
    md = network_tables({"mode": "quick", "network": entry})
    assert "| mlp | MultiWorkerMirrored (2 workers) | 10Mbit | 6,400 | 10.0 |" in md
    assert "| mlp | MultiWorkerMirrored (2 workers) | 10Mbit | 4.00 | 5.50 | 60% | 60% | ok |" in md
    assert "Hybrid: not measured" in md
    assert network_tables({"mode": "tiny", "network": {"status": "not available", "why": "no root"}}).endswith(
        "Not measured: no root.")


def test_time_to_accuracy_counts_training_seconds_to_the_first_epoch_at_the_target():
    assert net.time_to([2.0, 0.5, 0.5], [0.5, 0.91, 0.95], 0.9) == pytest.approx(2.5)
    assert net.time_to([2.0, 0.5], [0.5, 0.6], 0.9) is None
