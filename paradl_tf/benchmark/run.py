"""The run: `paradl-tf bench` from start to results.json, every method against one device and hand-written code.

    paradl-tf bench --quick              # fewer repetitions and points: under 19 minutes on 2 cores
    paradl-tf bench --out=bench          # the full run: under 206 minutes on 2 cores (the parts' budgets)
    paradl-tf bench --parts=sections     # some parts only (paradl_tf.benchmark.parts.PARTS)
    make bench

    from paradl_tf.benchmark.run import run_bench
    results = run_bench(quick=True, out_dir="bench")   # the same, from Python

Writes <out>/results.json (machine, every figure as min/median/max), <out>/RESULTS.md (the
tables, with ratios) and <out>/*.png (throughput per method, scaling curves, pipeline curve).

How: every measurement is one fresh process (`python -m paradl_tf.benchmark.worker`), because
logical devices must be set before TensorFlow starts and a process keeps one layout. The
toolkit side builds everything with paradl_tf.prepare(cfg) and runs train()'s model.fit call
(parameter servers, MultiWorkerMirrored: paradl_tf.train, which starts the local cluster); the
hand-written side runs paradl_tf.benchmark.reference (plain tf.distribute + Keras, the same data,
model, optimizer; its own local cluster of processes on 127.0.0.1 where the toolkit starts one).
Parameter servers and MultiWorkerMirrored have a third side, `tutorial`: the same workload written as
TensorFlow's own tutorials write it (paradl_tf.benchmark.reference.TUTORIALS), toolkit / tutorial target 1.0.
Processes run one at a time, interleaved (A B C A B C ...), so slow drift of the machine hits
every method alike; each process trains one warm-up epoch (tracing) and then timed epochs.
A figure is the min/median/max over the timed epochs of all its processes (quick mode: one
process). A method that cannot run here is reported "not available", with why.

Beside the main table, sections vary one config key of the toolkit on a few workloads and methods
(`Section`): precision (float32, mixed_bfloat16, mixed_float16 where native; each row against the matmul
peak of the dtype it computes in) and threads (intra_op 1 against 2, against the physical cores' ceiling).
The network part (parts/network.py, `NetworkPlan`; root) runs MultiWorkerMirrored against parameter servers on
emulated hosts, every link slowed and one worker slowed, each row beside its cost model (docs/sync-or-async.md).
The data section (`DataPlan`, measured last on its own budget) reads the same examples from TFRecord shards and
from memory: the input pipeline alone, training files / memory, and peak RSS over ~1 GB against ~20 MB of shards.

Adding a method is one entry in methods.METHODS; a workload, one in workloads.WORKLOADS; a section, one in a
modes.Mode; a part (a table on its own budget), one module in parts/ and one entry in parts.PARTS.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from paradl_tf.benchmark import budgets, machine
from paradl_tf.benchmark.modes import MODES, Mode, with_reps
from paradl_tf.benchmark.parts import PARTS, Bench, check_selection
from paradl_tf.benchmark.processes import sigterm_interrupts
from paradl_tf.benchmark.report.markdown import write_all
from paradl_tf.benchmark.report.console import console_table
from paradl_tf.benchmark.results import assemble


def run_bench(quick: bool = False, out_dir: str | Path = "bench", *, tiny: bool = False, reps: int | None = None,
              virtual_gpus: bool = False, gpu_memory_mb: int = 2048, parts: Sequence[str] = PARTS,
              methods: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure every available method and write results.json, RESULTS.md and the plots to `out_dir`.

    quick: fewer processes, methods and points (under 19 minutes on 2 cores); tiny: tiny models, for tests.
    reps: processes per figure (default: the mode's). virtual_gpus: on a GPU machine, split GPU 0 into
    logical GPUs of gpu_memory_mb each for the multi-device methods (default: the real GPUs only).
    parts: which of PARTS to measure (the matmul peaks always are); the others are left out of the results.
    methods: the main table's methods to measure (names of METHODS; default: all)."""
    check_selection(parts, methods)
    mode = MODES["tiny" if tiny else "quick" if quick else "full"]
    if reps:
        mode = with_reps(mode, reps)
    with sigterm_interrupts():
        return _run_bench(mode, Path(out_dir), virtual_gpus, gpu_memory_mb, frozenset(parts), methods, log)


def _run_bench(mode: Mode, out: Path, virtual_gpus: bool, gpu_memory_mb: int, parts: frozenset[str],
               methods: Sequence[str] | None, log: Callable[[str], None]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    # Started first: the matmul peaks' processes count against the main table's budget.
    main_budget = PARTS["main"].budget(mode)
    budgets.forget_walls()
    log(f"paradl-tf bench ({mode.name}): {mode.note}")
    log(f"parts: {', '.join(p for p in PARTS if p in parts)} (budgets: "
        f"{', '.join(f'{p.title} {p.seconds(mode):.0f} s' for p in PARTS.values())})")
    probe, described = machine.probe(mode, out, main_budget, virtual_gpus, log)
    bench = Bench(mode, out, described, virtual_gpus, gpu_memory_mb, methods, log, probe)
    if "main" not in parts:  # the main part measures the peaks among its own processes; without it, alone
        bench.peaks = machine.measure_peaks(mode, described, probe, [], out, main_budget, log)
    for part in PARTS.values():
        if part.name in parts:
            part.run(bench, main_budget if part.name == "main" else part.budget(mode))

    results = assemble(bench, started, time.perf_counter() - t0)
    results["parts"] = [p for p in PARTS if p in parts]
    results["methods_selected"] = list(methods) if methods else None
    results.update({p.name: bench.entries.get(p.name) for p in PARTS.values() if p.entry})
    results["files"] = write_all(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(console_table(results))
    log(f"wrote {out / 'results.json'}, {out / 'RESULTS.md'} and {len(results['files']) - 1} plots "
        f"in {results['wall_seconds']:.0f} s")
    return results
