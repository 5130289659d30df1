"""The benchmark: its registry and arithmetic without TensorFlow, a worker killed on timeout, one run of each
tutorial-style reference, and the whole `paradl-tf bench` on tiny workloads: the output files and their keys,
never the speeds."""

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from paradl_tf.benchmark import figures, methods, modes, processes, specs as bench_specs, workloads
from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.parts import PARTS, Bench, main as main_part, sections as sections_part
from paradl_tf.benchmark.parts import tutorials as tutorials_part
from paradl_tf.benchmark.reference import REFERENCES, TUTORIALS
from paradl_tf.benchmark.report import console, format as report_format, main as report_main, markdown

CPU_MACHINE = {"device_type": "CPU", "gpus": []}
FIGURE = {"min", "median", "max", "n", "samples"}


# ---------------------------------------------------------------- registry and arithmetic, no TensorFlow
@pytest.mark.parametrize("workload,params,flops", [
    ("mlp", 17_226, 2 * (64 * 128 + 128 * 64 + 64 * 10)),
    # conv 3x3x3->32 at 32x32, conv 3x3x32->64 at 16x16, dense 8*8*64->128, logits 128->10
    ("cnn", 545_098, 2 * (27 * 32 * 1024 + 288 * 64 * 256 + 4096 * 128 + 128 * 10)),
    ("inception", 15_018, 29_033_728),
])
def test_model_cost_counts_parameters_as_keras_does_and_matmul_flops(workload, params, flops):
    w = workloads.WORKLOADS[workload]
    shape, classes = workloads.input_shape(w.data)
    cost = workloads.model_cost(w.widen(w.model, w.width), shape, classes)
    assert cost == {"params": params, "forward_flops": flops}  # params: model.count_params() of both sides


def test_every_method_is_registered_once_with_an_existing_reference():
    names = [m.name for m in methods.METHODS]
    assert len(names) == len(set(names))
    for m in methods.METHODS:
        assert m.reference is None or m.reference in REFERENCES, m.name
        assert m.tutorial is None or m.tutorial in TUTORIALS, m.name
        assert set(m.workloads) <= set(workloads.WORKLOADS), m.name
    # Issue 14: the two cluster strategies also run TensorFlow's tutorial-style code.
    assert {m.name: m.tutorial for m in methods.METHODS if m.tutorial} == {
        "multi_worker_mirrored_2": "multi_worker_mirrored", "parameter_server": "parameter_server"}


def test_available_methods_validate_and_todo_methods_say_why():
    for m in methods.METHODS:
        for wname in m.workloads:
            why = bench_specs.unavailable(m, workloads.WORKLOADS[wname], CPU_MACHINE, virtual_gpus=False)
            if m.todo:
                assert why == m.todo and why.startswith("TODO")
            else:
                assert why is None, (m.name, wname, why)
    todo = methods.Method("later", "a method to come", "sync", {"kind": "default"}, todo="TODO: not wired in")
    assert bench_specs.unavailable(todo, workloads.WORKLOADS["mlp"], CPU_MACHINE, virtual_gpus=False) == "TODO: not wired in"


def test_every_strategy_has_a_hand_written_reference():
    assert [m.name for m in methods.METHODS if m.todo or not m.reference] == []


def test_every_part_is_a_module_with_run_and_a_budget_in_every_mode():
    """A part of the run is one module and one entry in parts.PARTS: nothing else names the parts."""
    import importlib

    assert list(PARTS) == ["main", "tutorials", "sections", "sweeps", "network", "data"]  # the order they run in
    for part in PARTS.values():
        assert callable(importlib.import_module(part.module).run), part.name
        assert set(part.budget_s) == set(modes.MODES) and part.budget_s["full"] > 0, part.name
    # A part runs in every mode its budget allows: the tutorials part alone is full mode only.
    assert [p.name for p in PARTS.values() if min(p.budget_s.values()) == 0] == ["tutorials"]
    assert [m for m, plan in tutorials_part.PLANS.items() if plan] == ["full"]


def test_gpu_machine_uses_real_gpus_unless_virtual_ones_are_asked_for():
    gpu1 = {"device_type": "GPU", "gpus": ["A100"]}
    m4 = methods.METHOD_BY_NAME["mirrored_4"]
    assert "needs 4 GPUs" in bench_specs.unavailable(m4, workloads.WORKLOADS["cnn"], gpu1, virtual_gpus=False)
    assert bench_specs.devices_for(m4, gpu1, virtual_gpus=False, gpu_memory_mb=1024) == {"type": "GPU", "count": 1}
    assert bench_specs.devices_for(m4, gpu1, virtual_gpus=True, gpu_memory_mb=1024) == {
        "type": "GPU", "count": 4, "memory_limit_mb": 1024}
    assert bench_specs.devices_for(m4, CPU_MACHINE, False, 0) == {"type": "CPU", "count": 4}


def test_stat_and_paired_ratio():
    assert figures.stat([3, 1, 2]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3, "samples": [3.0, 1.0, 2.0]}
    assert figures.stat([None]) is None
    a = {"status": "ok", "examples_per_sec": figures.stat([10, 20, 30]), "sample_keys": [0, 1, 2]}
    b = {"status": "ok", "examples_per_sec": figures.stat([10, 10, 30]), "sample_keys": [0, 1, 4]}
    assert figures.paired_ratio(a, b) == figures.stat([1.0, 2.0])  # round 2 of b failed: rounds 0 and 1 pair up
    assert figures.paired_ratio(a, {"status": "failed"}) is None


def test_full_mode_runs_the_tutorial_style_code_beside_toolkit_and_reference_for_the_cluster_methods():
    mode = modes.MODES["full"]
    specs, _ = main_part.main_specs(mode, CPU_MACHINE, False, 0)
    impls: dict[tuple, dict] = {}
    for spec in specs:
        impls.setdefault(spec.key[1:3], {})[spec.key[3]] = spec
    for (wname, method), by_impl in impls.items():
        if method in ("multi_worker_mirrored_2", "parameter_server"):
            assert set(by_impl) == {"toolkit", "reference", "tutorial"}, (wname, method)
            tut = by_impl["tutorial"]
            assert tut.worker["tutorial"] == methods.METHOD_BY_NAME[method].tutorial and tut.reps == mode.reps
            assert tut.worker["config"] == by_impl["toolkit"].worker["config"]  # the same workload and cluster
            assert tut.worker["keras"] == by_impl["toolkit"].worker["keras"] == "tf_keras"
        else:
            assert "tutorial" not in by_impl, (wname, method)
    assert {w for w, m in impls if m == "parameter_server"} == {"mlp", "cnn"}
    # --methods: only those, on every workload they run on
    only, _ = main_part.main_specs(mode, CPU_MACHINE, False, 0, only=["parameter_server", "branches_4"])
    assert {s.key[1:3] for s in only} == {("mlp", "parameter_server"), ("cnn", "parameter_server"),
                                          ("inception", "branches_4")}


def test_ratios_pair_toolkit_with_the_tutorial_style_rows_and_the_report_shows_them():
    def row(method, impl, samples):
        return {"section": "main", "workload": "mlp", "method": method, "impl": impl, "status": "ok",
                "keras": "tf_keras", "examples_per_sec": figures.stat(samples), "sample_keys": ["0.1", "1.1"],
                "samples_over": "timed epochs of 2 processes"}

    rows = [row("no_strategy", "reference", [1000, 1000]), row("parameter_server", "toolkit", [300, 360]),
            row("parameter_server", "reference", [300, 300]), row("parameter_server", "tutorial", [200, 400]),
            row("mirrored_2", "toolkit", [500, 500]), row("mirrored_2", "reference", [500, 500])]
    found = {q["method"]: q for q in figures.ratios(rows)}
    assert found["parameter_server"]["toolkit_over_tutorial"] == figures.stat([1.5, 0.9])  # round by round
    assert found["parameter_server"]["toolkit_over_tutorial_target"] == figures.TARGETS["toolkit_over_tutorial"] == 1.0
    assert found["mirrored_2"]["toolkit_over_tutorial"] is None  # no tutorial-style code for this method

    results = {"workloads": {"mlp": {}}, "rows": rows, "ratios": list(found.values()),
               "methods": {m.name: {"title": m.title} for m in methods.METHODS},
               "targets": {"toolkit_over_tutorial": 1.0}}
    table = report_main.tutorial_table(results)
    assert table.startswith("## Against TensorFlow's tutorials") and "legacy" in table and "prefetch(2)" in table
    (line,) = [x for x in table.splitlines() if x.startswith("| mlp |")]
    assert "parameter servers" in line and "330 (300-360)" in line and "300 (200-400)" in line
    assert line.endswith("| 1.20x (0.90-1.50) ok |")
    assert "  vs tutorial-style" in console.console_table({**results, "peak": None, "mode": "full",
                                                                "repetitions": {"note": ""}})
    no_tutorial = [r for r in rows if r["impl"] != "tutorial"]
    assert report_main.tutorial_table({**results, "rows": no_tutorial, "ratios": figures.ratios(no_tutorial)}) == ""


def test_quick_mode_plans_few_processes():
    specs, missing = main_part.main_specs(modes.MODES["quick"], CPU_MACHINE, False, 0)
    assert 8 <= len(specs) <= 15  # 15: MultiWorkerMirrored's toolkit, hand-written and tutorial-style sides
    assert {r["status"] for r in missing} == {"skipped"}
    for spec in specs:  # the hand-written side runs the Keras the toolkit picks
        assert spec.worker["keras"] in ("keras3", "tf_keras")
        assert spec.worker["config"]["train"]["epochs"] == modes.MODES["quick"].epochs


def test_reps_sets_the_processes_per_figure_and_the_note_says_so():
    mode = modes.with_reps(modes.MODES["full"], 8)
    assert (mode.reps, mode.sweep_reps) == (8, 2)  # sweeps keep their own, fewer
    assert mode.note.startswith("8 processes per figure (2 per sweep point and section row)")
    assert mode.note.endswith("min/median/max of 24 timed epochs (6 per sweep point and section row) (--reps=8)")
    assert modes.with_reps(modes.MODES["quick"], 2).note.startswith("QUICK MODE: 2 processes per figure (1 per")
    assert modes.MODES["full"].note == ("3 processes per figure (2 per sweep point and section row), each 1 warm-up "
                                        "epoch + 3 timed epochs: a figure is the min/median/max of 9 timed epochs "
                                        "(6 per sweep point and section row)")  # the words it always had
    specs, _ = main_part.main_specs(mode, CPU_MACHINE, False, 0, ["parameter_server"])
    assert len(specs) == 6 and all(s.reps == 8 for s in specs)  # mlp and cnn: toolkit, hand-written, tutorial
    # The main table's budget grows with the processes it runs; the other parts' (fewer per figure) stays.
    assert PARTS["main"].seconds(mode) == PARTS["main"].budget_s["full"] * 8 / 3
    assert PARTS["main"].seconds(modes.with_reps(modes.MODES["full"], 2)) == PARTS["main"].budget_s["full"]
    assert PARTS["sections"].seconds(mode) == PARTS["sections"].budget_s["full"]


@pytest.mark.parametrize("native_float16", [False, True])
def test_sections_plan_valid_configs_and_say_why_a_value_cannot_run(native_float16):
    machine = {**CPU_MACHINE, "cpus_usable": 2, "native_float16": native_float16}
    for mode in modes.MODES.values():
        specs, missing = sections_part.section_specs(mode, machine, False, 0)
        planned = {s.key for s in specs}
        for section in mode.sections:
            for w in section.workloads:
                for m in section.methods:
                    for value in section.values:
                        key = (section.name, w, m, "toolkit", value)
                        if section.name == "precision" and value == "mixed_float16" and not native_float16:
                            assert key not in planned
                            row = next(r for r in missing
                                       if (r["section"], r["workload"], r["method"], r["impl"], r["x"]) == key)
                            assert row["status"] == "not available" and "no native float16" in row["why"]
                        else:
                            assert key in planned, key
        for spec in specs:  # every value lands in the config the toolkit validates
            assert bench_specs.config_error(spec.worker["config"]) is None
            section, value = spec.key[0], spec.key[4]
            cfg = spec.worker["config"]
            set_to = cfg["train"]["precision"] if section == "precision" else cfg["devices"]["threads"]["intra_op"]
            assert set_to == value
    full = {s.key[1:3] for s in sections_part.section_specs(modes.MODES["full"], machine, False, 0)[0] if s.key[0] == "precision"}
    assert full == {(w, m) for w in ("cnn", "mlp_wide") for m in ("no_strategy", "mirrored_2", "model_parallel_2")}
    one_core = sections_part.section_specs(modes.MODES["tiny"], {**machine, "cpus_usable": 1}, False, 0)[1]
    assert any(r["section"] == "threads" and r["x"] == 2 and "1 usable cores" in r["why"] for r in one_core)


def test_section_ratios_pair_rounds_and_threads_say_how_close_to_the_cores_ceiling():
    def row(section, x, samples):
        return {"section": section, "workload": "mlp", "method": "no_strategy", "x": x,
                "examples_per_sec": figures.stat(samples), "sample_keys": ["0.0", "0.1"],
                "samples_over": "timed epochs of one process"}

    rows = [row("threads", 1, [100, 100]), row("threads", 2, [150, 170]),
            row("precision", "float32", [100, 200]), row("precision", "mixed_bfloat16", [130, 260])]
    mode = modes.MODES["tiny"]
    found = {q["section"]: q for q in sections_part.section_ratios(rows, mode, {"cpu_cores_physical": 2})}
    assert found["threads"]["over_baseline"]["median"] == pytest.approx(1.6)
    assert found["threads"]["ceiling"] == 2 and found["threads"]["of_ceiling"] == pytest.approx(0.8)
    assert found["precision"]["over_baseline"] == figures.stat([1.3, 1.3]) and "ceiling" not in found["precision"]
    one_core = sections_part.section_ratios(rows, mode, {"cpu_cores_physical": 1})
    assert next(q for q in one_core if q["section"] == "threads")["ceiling"] == 1


def test_a_worker_past_its_timeout_is_killed_with_everything_it_started(tmp_path):
    t = time.perf_counter()
    result = processes.run_worker({"kind": "matmul", "sizes": [64]}, tmp_path / "w.log", timeout_s=0.5)
    assert not result["ok"] and "timed out after" in result["error"] and "was killed" in result["error"]
    assert time.perf_counter() - t < 15
    assert not psutil.Process().children(recursive=True)


@pytest.mark.timeout(120)
def test_a_worker_runs_on_the_cpus_it_is_given(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    result = processes.run_worker({"kind": "matmul", "sizes": [64]}, tmp_path / "w.log", timeout_s=100,
                                  cpus=frozenset({cpu}))
    assert result["ok"] and result["cpus"] == [cpu]
    assert not psutil.Process().children(recursive=True)


# ---------------------------------------------------------------- the tutorials part: both sides at the same time
def _fake_worker(calls: list, failing: tuple = ()):
    """run_worker as the tutorials part calls it, without TensorFlow: each side runs 0.3 s and reports epochs on a
    timeline of its own, the toolkit's cluster starting 0.5 s later than the other's (a first epoch of 9 s, then
    1,100 examples/s against 1,000); (impl, round) in `failing` fail."""

    def run_worker(worker, log_path, timeout_s, cpus, env):
        start = time.time()
        time.sleep(0.3)
        calls.append({"impl": worker["impl"], "method": worker["config"]["strategy"]["kind"], "cpus": set(cpus),
                      "env": env, "start": start, "end": time.time(), "log": log_path.name})
        if (worker["impl"], log_path.stem.rsplit("_", 1)[1]) in failing:
            return {"ok": False, "error": "RuntimeError: worker 1 exited with status 1"}
        train = worker["config"]["train"]
        steps, batch = train["steps_per_epoch"], train["global_batch_size"]
        rate = 1100.0 if worker["impl"] == "toolkit" else 1000.0
        seconds = [9.0] + [steps * batch / rate] * (train["epochs"] - 1)
        began = start + (1.5 if worker["impl"] == "toolkit" else 1.0)
        ends = [began + sum(seconds[:i + 1]) for i in range(len(seconds))]
        return {"ok": True, "epoch_seconds": seconds, "epoch_ends_unix": ends, "steps_per_epoch": steps,
                "global_batch_size": batch, "cpus": sorted(cpus)}

    return run_worker


def _tutorials_bench(tmp_path, mode: str = "full") -> tuple[Bench, list[str]]:
    logs: list[str] = []
    return Bench(modes.MODES[mode], tmp_path, {"device_type": "CPU"}, False, 0, None, logs.append, None), logs


def test_tutorials_side_by_side_pins_each_side_to_its_own_half_and_swaps_them(monkeypatch, tmp_path):
    calls: list[dict] = []
    monkeypatch.setattr(tutorials_part, "run_worker", _fake_worker(calls, failing={("tutorial", "2")}))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    plan = tutorials_part.TutorialsPlan(("mlp",), rounds=3, epochs=4, steps_scale=2, timeout_s=60)
    bench, logs = _tutorials_bench(tmp_path)
    entry = tutorials_part.measure(bench, plan, Budget.start("tutorials side by side", 600))

    assert entry["status"] == "ok" and entry["cpus"] == [[0, 1], [2, 3]] and entry["target"] == 1.0
    rows = {r["method"]: r for r in entry["rows"]}
    mlp = workloads.WORKLOADS["mlp"]  # epochs of twice the main table's steps (steps_scale)
    assert {r["steps_per_epoch"] for r in rows.values()} == {
        2 * bench_specs.steps_for(mlp, modes.MODES["full"], mlp.batch, mlp.width)}
    assert set(rows) == {"multi_worker_mirrored_2", "parameter_server"}  # the methods with a tutorial-style side
    for method, row in rows.items():
        kind = methods.METHOD_BY_NAME[method].strategy["kind"]
        for r in range(3):
            toolkit, tutorial = (next(c for c in calls if c["impl"] == impl and c["method"] == kind
                                      and c["log"].endswith(f"_{r}.log")) for impl in ("toolkit", "tutorial"))
            # Round r: the toolkit on half r % 2, the tutorial-style side on the other, both at the same time; from
            # round 2 on, the side whose cluster started 0.5 s sooner starts 0.5 s later.
            assert toolkit["cpus"] == ({0, 1}, {2, 3})[r % 2] and tutorial["cpus"] == ({2, 3}, {0, 1})[r % 2]
            lag = tutorial["start"] - toolkit["start"]
            assert abs(lag) < 0.2 if r == 0 else 0.3 < lag < 0.7
            assert row["rounds"][r]["delayed_s"]["toolkit"] == 0
            assert row["rounds"][r]["delayed_s"]["tutorial"] == (0 if r == 0 else pytest.approx(0.5, abs=0.15))
            # A parameter-server worker needs workers + 1 inter-op threads, more than a half of 2 CPUs gives.
            expected_env = {"TF_NUM_INTEROP_THREADS": "3"} if method == "parameter_server" else {}
            assert toolkit["env"] == tutorial["env"] == expected_env
        first, second = {"toolkit": [0, 1], "tutorial": [2, 3]}, {"toolkit": [2, 3], "tutorial": [0, 1]}
        assert [x["cpus"] for x in row["rounds"]] == [first, second, {**first, "tutorial": None}]
        # Round 3's tutorial-style side failed: no ratio for it, the others are toolkit / tutorial of their round.
        assert [x.get("ratio") for x in row["rounds"]] == [pytest.approx(1.1)] * 2 + [None]
        assert all(x["epochs_together"] == 3 for x in row["rounds"][:2])
        assert row["rounds"][2]["tutorial"] == {"error": "RuntimeError: worker 1 exited with status 1"}
        assert row["toolkit_over_tutorial"]["median"] == pytest.approx(1.1) and row["rounds_measured"] == 2
        assert row["rounds_at_or_above_target"] == 2
        assert row["by_half"] == {"toolkit_on_first_half": pytest.approx(1.1),
                                  "toolkit_on_second_half": pytest.approx(1.1)}
    assert any("round 3: FAILED: tutorial: RuntimeError" in line for line in logs)

    md = report_main.tutorials_side_by_side_table({"tutorials": entry, "methods": {
        m.name: {"title": m.title} for m in methods.METHODS}})
    assert md.startswith("## Against TensorFlow's tutorials, side by side") and "(0,1 | 2,3)" in md
    # Two rounds are too few for a 90% interval of the median (five are needed): "-".
    assert "| mlp | MultiWorkerMirroredStrategy, 2 local processes | 2 | 1.10x (1.10-1.10) ok | - | 2 of 2 " \
           "| 1.10x (1.10-1.10) | 1.100 / 1.100 | 1.100, 1.100, failed |" in md


def test_median_interval_is_the_order_statistics_that_cover_the_median():
    """n values fall on either side of the true median with probability 1/2 each: [k-th smallest, k-th largest]
    misses it with probability 2 P(Binomial(n, 1/2) < k); k is the largest that keeps the cover at 90% or more."""
    ratios = [1.04, 0.91, 1.10, 0.97, 1.01, 0.99, 0.88, 1.06]
    found = figures.median_interval(ratios, 0.9)
    assert found == {"low": 0.91, "high": 1.06, "coverage": pytest.approx(1 - 2 * 9 / 256), "n": 8}  # k = 2
    assert figures.median_interval(ratios, 0.95) == {"low": 0.88, "high": 1.10,
                                                     "coverage": pytest.approx(1 - 2 / 256), "n": 8}  # k = 1
    assert figures.median_interval(ratios[:5], 0.9)["coverage"] == pytest.approx(1 - 2 / 32)
    assert figures.median_interval(ratios[:4], 0.9) is None  # 1 - 2/16 < 0.9: no interval is that sure
    assert report_format.fmt_interval(found) == "0.910-1.060 (93%)" and report_format.fmt_interval(None) == "-"


def test_side_by_side_ratios_count_the_epochs_both_sides_trained_together():
    """The tutorial-style side starts training 30 s sooner and runs its first epochs alone, faster; only the
    epochs both sides ran at the same time count (each 10 s here: the toolkit 640 examples/s, the other 500)."""
    steps, batch = 100, 64
    toolkit = {"epoch_seconds": [20.0] + [10.0] * 6, "epoch_ends_unix": [1050.0 + 10 * i for i in range(7)],
               "steps_per_epoch": steps, "global_batch_size": batch}
    tutorial = {"epoch_seconds": [20.0] + [6.4] * 3 + [12.8] * 3,
                "epoch_ends_unix": [1020.0, 1026.4, 1032.8, 1039.2, 1052.0, 1064.8, 1077.6],
                "steps_per_epoch": steps, "global_batch_size": batch}
    found = tutorials_part.together(toolkit, tutorial)
    # Together from 1050 (the toolkit's first timed epoch starts) to 1077.6 (the tutorial-style side ends):
    # the tutorial's last 2 epochs (middles 1058.4, 1071.2) and the toolkit's first 2 (1055, 1065).
    assert found["epochs_together"] == 2
    assert found["toolkit"] == pytest.approx(640) and found["tutorial"] == pytest.approx(500)
    assert found["ratio"] == pytest.approx(1.28)
    assert found["ratio_all_epochs"] == pytest.approx(640 / (6400 * 6 / (6.4 * 3 + 12.8 * 3)))

    alone = {**tutorial, "epoch_ends_unix": [e - 100 for e in tutorial["epoch_ends_unix"]]}  # never together
    found = tutorials_part.together(toolkit, alone)
    assert found["epochs_together"] == 0 and "ratio" not in found and found["ratio_all_epochs"] > 0


def test_tutorials_side_by_side_says_why_it_did_not_run(monkeypatch, tmp_path):
    calls: list[dict] = []
    monkeypatch.setattr(tutorials_part, "run_worker", _fake_worker(calls))
    bench, _ = _tutorials_bench(tmp_path, "quick")
    entry = tutorials_part.measure(bench, tutorials_part.PLANS["quick"], Budget.start("tutorials side by side", 0))
    assert entry["status"] == "skipped" and "full mode" in entry["why"] and "--parts=tutorials" in entry["why"]
    assert report_main.tutorials_side_by_side_table({"tutorials": entry}).endswith(f"skipped: {entry['why']}")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    plan = tutorials_part.TutorialsPlan(("mlp",), rounds=2, epochs=3, steps_scale=1, timeout_s=60)
    bench, _ = _tutorials_bench(tmp_path)
    entry = tutorials_part.measure(bench, plan, Budget.start("tutorials side by side", 600))
    assert entry["status"] == "not available" and entry["why"].endswith("this process has 1 usable")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    bench.methods = ["mirrored_2"]
    entry = tutorials_part.measure(bench, plan, Budget.start("tutorials side by side", 600))
    assert entry["status"] == "skipped" and entry["why"].startswith(
        "--methods=mirrored_2 names no method with a tutorial-style side (multi_worker_mirrored_2, parameter_server)")

    bench.methods = None
    entry = tutorials_part.measure(bench, plan, Budget.start("tutorials side by side", 0))  # past the budget
    assert entry["status"] == "ok" and all(row["rounds_measured"] == 0 and row["toolkit_over_tutorial"] is None
                                           for row in entry["rows"])
    assert {r["skipped"] for row in entry["rows"] for r in row["rounds"]} == {
        "it would end past the tutorials side by side budget of 0 s"}
    assert not calls


@pytest.mark.timeout(120)
def test_hand_written_multi_worker_reference_stops_its_workers_when_one_fails():
    import tf_keras

    w, m = workloads.TINY_WORKLOADS["mlp"], methods.METHOD_BY_NAME["multi_worker_mirrored_2"]
    cfg = bench_specs.build_config(w, m, {"type": "CPU", "count": 1}, 32, 16, 3, 2, data={"kind": "no_such_data"})
    with pytest.raises(RuntimeError, match=r"worker \d exited with status 1"):
        REFERENCES["multi_worker_mirrored"](cfg, tf_keras)
    assert not psutil.Process().children(recursive=True)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["parameter_server", "multi_worker_mirrored_2"])
def test_tutorial_style_reference_trains_on_its_local_cluster(method, tmp_path):
    """One real run of TensorFlow's tutorial-style code, through the worker as the bench starts it (a fresh process:
    the parameter-server chief connects its process to the cluster)."""
    w, m = workloads.TINY_WORKLOADS["mlp"], methods.METHOD_BY_NAME[method]
    cfg = bench_specs.build_config(w, m, {"type": "CPU", "count": 1}, 32, 16, 3, 2)
    spec = bench_specs.train_spec(("main", "mlp", method, "tutorial", None), cfg, m, 1)
    result = processes.run_worker(spec.worker, tmp_path / "tutorial.log", timeout_s=100)
    assert result["ok"], (result.get("error"), (tmp_path / "tutorial.log").read_text()[-3000:])
    assert len(result["epoch_seconds"]) == 2 and result["steps_per_epoch"] == 3 and result["global_batch_size"] == 32
    assert result["keras"] == "tf_keras" and result["cluster_start_seconds"] > 0
    assert result["input_pipeline"] == ("_ps_tutorial_input" if method == "parameter_server" else "_mwm_tutorial_input")
    # The parameter-server tutorial compiles with a legacy optimizer; the multi-worker one with the new ones.
    assert (".legacy." in result["optimizer"]) == (method == "parameter_server"), result["optimizer"]
    assert result["optimizer"].endswith(".Adam")
    assert not psutil.Process().children(recursive=True)


# ---------------------------------------------------------------- the whole command, tiny
@pytest.mark.timeout(240)
def test_bench_parts_and_methods_must_be_known(cli, tmp_path):
    proc = cli("bench", "--tiny", "--parts=main,warp", f"--out={tmp_path}", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: --parts=main,warp: each part must be one of main, tutorials, sections, "
                                   "sweeps, network, data")
    proc = cli("bench", "--tiny", "--methods=mirrored_2,mirored_4", f"--out={tmp_path}", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: --methods=mirrored_2,mirored_4: no method 'mirored_4'; the methods: "
                                          "no_strategy, mirrored_1, mirrored_2,")
    proc = cli("bench", "--tiny", "--reps=0", f"--out={tmp_path}", timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: flag --reps=0: 0 is not a positive integer"
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.timeout(600)
def test_bench_tiny_writes_results_tables_and_plots(cli, tmp_path):
    out = tmp_path / "bench"
    # The network part is left out: notebook 05 runs it tiny (tests/test_notebooks.py checks what it measured).
    proc = cli("bench", "--quick", "--tiny", "--parts=main,sections,sweeps,data", f"--out={out}", timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and "TINY MODE" in proc.stdout
    results = json.loads((out / "results.json").read_text())

    assert results["parts"] == ["main", "sections", "sweeps", "data"] and results["network"] is None
    assert {"schema", "created", "mode", "repetitions", "machine", "peak", "workloads", "methods", "rows", "ratios",
            "best_strategy", "sweeps", "pipeline", "targets", "files", "wall_seconds"} <= results.keys()
    machine = results["machine"]
    assert {"cpu_cores_logical", "cpu_model", "memory_bytes", "tensorflow_version", "keras_version",
            "device_type", "device_kind"} <= machine.keys()
    assert machine["device_type"] in ("CPU", "GPU") and machine["tensorflow_version"]
    assert FIGURE <= results["peak"]["flops_per_sec"].keys()
    assert results["repetitions"]["note"].startswith("TINY MODE")

    rows = results["rows"]
    measured = [r for r in rows if r.get("examples_per_sec")]
    assert {("mlp", "no_strategy", "reference"), ("mlp", "mirrored_2", "toolkit")} <= {
        (r["workload"], r["method"], r["impl"]) for r in measured}
    for r in measured:
        for key in ("examples_per_sec", "step_seconds", "flops_per_sec", "fraction_of_peak", "peak_rss_bytes"):
            assert FIGURE <= r[key].keys(), (r["method"], key)
        assert {"import_seconds", "build_seconds", "first_epoch_seconds", "process_wall_seconds"} <= r["startup"].keys()
    assert {("mlp", "model_parallel_2", "toolkit"), ("mlp", "model_parallel_2", "reference")} <= {
        (r["workload"], r["method"], r["impl"]) for r in measured}
    # Every method runs here; tiny mode leaves out the local cluster (a process per worker on each side: too slow).
    mwm = next(r for r in rows if r["section"] == "main" and r["method"] == "multi_worker_mirrored_2")
    assert mwm["status"] == "skipped" and mwm["why"] == "skipped in tiny mode" and "examples_per_sec" not in mwm
    assert not any(r["status"] == "not available" for r in rows if r["section"] == "main")
    for method in ("mirrored_2", "model_parallel_2"):
        ratio = next(r for r in results["ratios"] if r["method"] == method)
        assert {"toolkit_over_reference", "vs_one_device", "toolkit_over_reference_target"} <= ratio.keys()
        assert FIGURE <= ratio["toolkit_over_reference"].keys(), method
    assert {"batch", "width"} == results["sweeps"].keys() and results["sweeps"]["batch"]

    # The sections: precision rows against their own dtype's peak, measured in this run; threads against the cores.
    assert {"float32", "bfloat16"} <= results["peaks"].keys() and results["peak"] == results["peaks"]["float32"]
    assert results["peaks"]["bfloat16"]["dtype"] == "bfloat16"
    assert FIGURE <= results["peaks"]["bfloat16"]["flops_per_sec"].keys()
    section_rows = {(r["section"], r["x"]): r for r in rows if r["section"] in ("precision", "threads")}
    for key in (("precision", "float32"), ("precision", "mixed_bfloat16"), ("threads", 1), ("threads", 2)):
        r = section_rows[key]
        assert r["status"] == "ok" and r["impl"] == "toolkit" and r["workload"] == "mlp", r
        assert FIGURE <= r["examples_per_sec"].keys() and FIGURE <= r["train_accuracy"].keys()
    f32, bf16 = section_rows[("precision", "float32")], section_rows[("precision", "mixed_bfloat16")]
    assert bf16["config"]["train"]["precision"] == "mixed_bfloat16"
    for r, dtype in ((f32, "float32"), (bf16, "bfloat16")):  # % of the peak of the dtype it computes in
        peak = results["peaks"][dtype]["flops_per_sec"]["median"]
        assert r["fraction_of_peak"]["median"] == pytest.approx(r["flops_per_sec"]["median"] / peak)
    if not results["machine"]["native_float16"]:
        assert section_rows[("precision", "mixed_float16")]["status"] == "not available"
    ratios = {(q["section"], q["x"]): q for q in results["section_ratios"]}
    assert FIGURE <= ratios[("precision", "mixed_bfloat16")]["over_baseline"].keys()
    assert ratios[("threads", 2)]["ceiling"] == min(2, results["machine"]["cpu_cores_physical"])
    assert ratios[("threads", 2)]["of_ceiling"] > 0

    # The data section: the same examples from TFRecord shards and from memory; the shards are gone afterwards.
    data = results["data"]
    assert all(s["ok"] and s["bytes"] > 0 for s in data["shards"].values()), data["shards"]
    (inp,) = data["input"]
    assert inp["status"] == "ok" and FIGURE <= inp["memory"].keys() and FIGURE <= inp["files_over_memory"].keys()
    (train,) = data["train"]
    assert FIGURE <= train["files_over_memory"].keys() and train["target"] == 0.95
    data_rows = {(r["section"], r["x"]): r for r in rows if r["section"] in ("data", "data_memory")}
    assert data_rows[("data", "files")]["config"]["data"]["kind"] == "tfrecord"
    assert data_rows[("data", "memory")]["config"]["model"] == data_rows[("data", "files")]["config"]["model"]
    memory = data["memory"]
    for name in ("small", "big", "big_small_buffer"):
        assert memory[name]["status"] == "ok" and memory[name]["peak_rss_bytes"]["median"] > 0, name
    assert memory["big"]["bytes"] > memory["small"]["bytes"] and memory["difference_bytes"] is not None
    service = data["service"]  # in its own process, in a private network namespace where one can be made
    assert service["status"] == "ok", service
    assert service["in_process_examples_per_sec"] > 0 and service["service_examples_per_sec"] > 0
    assert service["remote_estimate_examples_per_sec"] > 0
    assert data["folder"] and not Path(data["folder"]).exists()  # the shards are removed at the end

    assert "## Sync against async on emulated hosts" not in (out / "RESULTS.md").read_text()

    assert set(results["files"]) >= {"RESULTS.md", "throughput_per_method.png", "scaling_batch.png",
                                     "scaling_width.png"}
    for name in results["files"]:
        assert (out / name).stat().st_size > 0
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "RESULTS.md").read_text()
    for heading in ("# paradl_tf benchmark results", "## Throughput", "| method | keras | toolkit examples/s",
                    "## Start-up cost and memory", "## Scaling with global batch size", "tk/hw", "vs 1 dev",
                    "| float32 matmul peak |", "| bfloat16 matmul peak |", "## Precision", "% own peak",
                    "## Threads", "of ceiling", "## Data from files", "### Input pipeline alone",
                    "### Training from files against in memory", "### Memory: peak RSS", "### tf.data service",
                    "| local tf.data service, 2 data workers |"):
        assert heading in md
    assert "Against TensorFlow's tutorials" not in md  # tiny mode runs no local cluster, so no tutorial-style row

    # The hand-kept before/after record in the output folder closes RESULTS.md, rerun after rerun.
    (out / markdown.BEFORE_AFTER).write_text("## Before and after\n\n### 1. A fix\n")
    markdown.write_all(results, out)
    assert (out / "RESULTS.md").read_text().endswith("## Before and after\n\n### 1. A fix\n")
