"""The modes (full, quick, tiny): how much each measures, and the sections, tables that vary one config key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from paradl_tf.benchmark.methods import BASELINE, METHODS
from paradl_tf.benchmark.workloads import TINY_WORKLOADS, WORKLOADS, Workload


@dataclass(frozen=True)
class Section:
    """A table beside the main one: the toolkit on workloads x methods with one config key set to each value in
    turn. Its processes run interleaved (every value once per round), so each row's ratio to the `baseline`
    value pairs processes of the same round."""

    name: str
    title: str
    key: tuple[str, ...]
    """Where the value goes in the config, e.g. ("train", "precision")."""
    values: tuple
    baseline: Any
    workloads: tuple[str, ...]
    methods: tuple[str, ...]


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def precision(workloads: tuple[str, ...], methods: tuple[str, ...]) -> Section:
    return Section("precision", "Precision: float32 against mixed precision", ("train", "precision"), PRECISIONS,
                   "float32", workloads, methods)


def threads(workloads: tuple[str, ...]) -> Section:
    return Section("threads", "Threads: intra-op pool of 1 against 2 threads", ("devices", "threads", "intra_op"),
                   (1, 2), 1, workloads, (BASELINE,))


@dataclass(frozen=True)
class Mode:
    """How much to measure: which workloads and methods, how many processes, epochs and sweep points."""

    name: str
    workloads: dict[str, Workload]
    methods: dict[str, tuple[str, ...]]
    """workload -> methods measured in the main table (others are listed as skipped in this mode)."""
    reps: int
    sweep_reps: int
    epochs: int
    """Per process: one warm-up epoch, then epochs - 1 timed."""
    steps_scale: float
    batches: tuple[int, ...]
    width_factors: tuple[float, ...]
    """Swept widths, as multiples of each workload's default width."""
    sweep_workloads: tuple[str, ...]
    matmul_sizes: tuple[int, ...]
    timeout_s: float
    jobs: int = 1
    """Processes at a time. More than 1 only for tests: concurrent processes make the timings meaningless."""
    note: str = ""
    """What RESULTS.md says a figure is taken over; default: `repetitions` of this mode's counts."""
    sections: tuple[Section, ...] = ()
    """Measured after the main table, `sweep_reps` processes per row."""

    def __post_init__(self):
        if not self.note:
            object.__setattr__(self, "note", repetitions(self.reps, self.sweep_reps, self.epochs))


def repetitions(reps: int, sweep_reps: int, epochs: int) -> str:
    """The processes and timed epochs a figure is taken over, in words."""
    timed = epochs - 1
    return (f"{reps} process{'es' if reps > 1 else ''} per figure ({sweep_reps} per sweep point and section row), "
            f"each 1 warm-up epoch + {timed} timed epochs: a figure is the min/median/max of {reps * timed} timed "
            f"epochs ({sweep_reps * timed} per sweep point and section row)")


_ALL = tuple(m.name for m in METHODS)

MODES: dict[str, Mode] = {
    "full": Mode(
        "full", WORKLOADS, {w: _ALL for w in WORKLOADS}, reps=3, sweep_reps=2, epochs=4, steps_scale=1.0,
        batches=(64, 256, 1024, 2048), width_factors=(1, 2, 4), sweep_workloads=("mlp", "cnn"),
        matmul_sizes=(1024, 2048, 4096), timeout_s=300,
        sections=(precision(("cnn", "mlp_wide"), (BASELINE, "mirrored_2", "model_parallel_2")),
                  threads(("mlp", "cnn")))),
    "quick": Mode(
        "quick", WORKLOADS, {"mlp": ("no_strategy", "mirrored_2", "multi_worker_mirrored_2", "model_parallel_2"),
                             "cnn": ("no_strategy", "mirrored_2", "pipeline_4")},
        reps=1, sweep_reps=1, epochs=3, steps_scale=0.5, batches=(64, 512), width_factors=(1, 4),
        sweep_workloads=("mlp",), matmul_sizes=(2048, 4096), timeout_s=120,
        note="QUICK MODE: 1 process per figure, min/median/max over its 2 timed epochs; fewer methods, "
             "sweep points and section rows. Run without --quick for the real figures (3 processes per figure)",
        sections=(precision(("cnn", "mlp_wide"), (BASELINE,)), threads(("mlp", "cnn")))),
    "tiny": Mode(
        "tiny", TINY_WORKLOADS, {"mlp": ("no_strategy", "mirrored_2", "model_parallel_2")}, reps=1, sweep_reps=1,
        epochs=2, steps_scale=1.0, batches=(32, 64), width_factors=(0.5, 1), sweep_workloads=("mlp",),
        matmul_sizes=(256,), timeout_s=150, jobs=2,
        note="TINY MODE (tests): tiny models, processes run 2 at a time; the speeds mean nothing",
        sections=(precision(("mlp",), (BASELINE,)), threads(("mlp",)))),
}
"""Each part's time budget per mode is in its registry entry (paradl_tf.benchmark.parts.PARTS); a part's own
settings per mode, in its module (the data part's: paradl_tf.benchmark.parts.data.PLANS)."""


def with_reps(mode: Mode, reps: int) -> Mode:
    """`mode` with `reps` processes per figure (and no more per sweep point and section row); its note says so."""
    sweep_reps = min(mode.sweep_reps, reps)
    note = f"{repetitions(reps, sweep_reps, mode.epochs)} (--reps={reps})"
    if mode.name != "full":
        note = f"{mode.name.upper()} MODE: {note}"
    return replace(mode, reps=reps, sweep_reps=sweep_reps, note=note)
