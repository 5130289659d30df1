"""The parts of a bench run, one module each: the registry of parts (name -> module, budget) and what they share.

A part is a module with `run(bench: Bench, budget: Budget) -> None` that measures its processes and adds its rows
to `bench.rows` (and, for a results.json entry of its own, `bench.entries[name]`); a new part is that module and
one entry in PARTS. Its settings per mode live in its module (as the data part's PLANS do); its budget here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.machine import median_flops
from paradl_tf.benchmark.methods import METHOD_BY_NAME
from paradl_tf.benchmark.modes import MODES, Mode
from paradl_tf.benchmark.specs import Spec
from paradl_tf.errors import ConfigError


@dataclass(frozen=True)
class Part:
    """One part of a run: where its `run(bench, budget)` lives and its wall-clock budget in each mode."""

    name: str
    title: str
    """As its budget names it, e.g. in "it would end past the quick mode's main table budget of 200 s"."""
    module: str
    budget_s: dict[str, float]
    """Seconds per mode (full, quick, tiny): each part has its own, so a slow part cannot starve the next."""
    entry: bool = False
    """The part writes results.json[name] of its own (null when it does not run)."""
    scales_with_reps: bool = False
    """Its budget grows with --reps past the mode's own (each of its figures is `reps` processes)."""

    def seconds(self, mode: Mode) -> float:
        """This part's budget in `mode`: budget_s, times reps / the mode's own reps where it scales with them."""
        scale = max(1.0, mode.reps / MODES[mode.name].reps) if self.scales_with_reps else 1.0
        return self.budget_s[mode.name] * scale

    def budget(self, mode: Mode) -> Budget:
        """This part's budget in `mode`, from now."""
        return Budget.start(self.title, self.seconds(mode))

    def run(self, bench: Bench, budget: Budget) -> None:
        importlib.import_module(self.module).run(bench, budget)


PARTS: dict[str, Part] = {p.name: p for p in [
    Part("main", "main table", "paradl_tf.benchmark.parts.main", {"full": 38 * 60, "quick": 200, "tiny": 180},
         scales_with_reps=True),
    # After the main table: its tutorial-style rows, then the same methods side by side, each side pinned to half
    # the CPUs; 4 rows x 8 rounds, each about 100 s of two local clusters starting on one core each. Not in the
    # quick and tiny modes (budget 0): a ratio needs its rounds.
    Part("tutorials", "tutorials side by side", "paradl_tf.benchmark.parts.tutorials",
         {"full": 60 * 60, "quick": 0, "tiny": 0}, entry=True),
    Part("sections", "sections", "paradl_tf.benchmark.parts.sections", {"full": 8 * 60, "quick": 90, "tiny": 60}),
    Part("sweeps", "sweeps", "paradl_tf.benchmark.parts.sweeps", {"full": 8 * 60, "quick": 45, "tiny": 60}),
    # On emulated hosts (root): sync against async under slow links and a straggler, beside the cost models. Most
    # of a row is its 4 processes starting TensorFlow on 2 cores (about 35 s); the rows at 100 and 10 Mbit also
    # run plan's cluster on loopback.
    Part("network", "network part", "paradl_tf.benchmark.parts.network", {"full": 80 * 60, "quick": 720, "tiny": 300},
         entry=True),
    # Last, on its own budget: it writes ~1 GB of shards (full mode) and measures memory.
    Part("data", "data section", "paradl_tf.benchmark.parts.data", {"full": 12 * 60, "quick": 180, "tiny": 120},
         entry=True),
]}
"""What `paradl-tf bench --parts` can select, in the order they run."""


def check_selection(parts: Sequence[str], methods: Sequence[str] | None) -> None:
    """`--parts` and `--methods` name known parts and methods; a ConfigError (one line) otherwise."""
    if not parts or any(p not in PARTS for p in parts):
        raise ConfigError(f"--parts={','.join(parts)}: each part must be one of {', '.join(PARTS)}")
    unknown = [m for m in methods or () if m not in METHOD_BY_NAME]
    if unknown:
        raise ConfigError(f"--methods={','.join(methods)}: no method {unknown[0]!r}; the methods: "
                          f"{', '.join(METHOD_BY_NAME)}")


@dataclass
class Bench:
    """One run as the parts see it: its settings, the machine, and what the parts before measured."""

    mode: Mode
    out: Path
    machine: dict
    virtual_gpus: bool
    gpu_memory_mb: int
    methods: Sequence[str] | None
    """The main table's methods (`--methods`); None: all."""
    log: Callable[[str], None]
    probe: Spec
    """The first matmul process (it found the devices); the main part measures the peaks' other processes."""
    peaks: dict[str, dict | None] = field(default_factory=dict)
    """Matmul peak per dtype."""
    rows: list[dict] = field(default_factory=list)
    """A row per measurement, in the order the parts ran."""
    missing: list[dict] = field(default_factory=list)
    """A row per measurement that cannot run here (not available, skipped in this mode)."""
    entries: dict[str, dict] = field(default_factory=dict)
    """results.json entries of a part's own, by part name."""

    def peak_flops(self, dtype: str = "float32") -> float | None:
        """The median matmul peak of `dtype`, FLOP/s."""
        return median_flops(self.peaks.get(dtype))
