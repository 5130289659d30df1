"""MultiWorkerMirrored on 2 emulated hosts (unshaped links, cluster.hosts) against the loopback local cluster, same
config: throughput, val_accuracy and the time from launch to the first step, as a markdown table. Needs root.

    .venv/bin/python tests/measure_hosts.py                      # 2 rounds of configs/sync_multiworker.yaml, 15 epochs
    .venv/bin/python tests/measure_hosts.py --rounds 3 --set train.epochs=5

The two kinds alternate (loopback, hosts, loopback, ...), so a machine's load drifts over both alike; the ratio is
the median of hosts / loopback over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"loopback": [], "emulated hosts": ["cluster.hosts={}"]}


def run(config: str, overrides: list[str], out: Path) -> dict:
    argv = [sys.executable, "-m", "paradl_tf.cli", "train", f"--config={config}", f"--set=output_dir={out}",
            *(f"--set={o}" for o in overrides)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sync_multiworker.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for kind, extra in KINDS.items():
                r = run(args.config, [*args.overrides, *extra], Path(tmp) / f"{i}-{len(rows[kind])}-{kind[0]}")
                rows[kind].append(r)
                print(f"round {i + 1} {kind}: {r['examples_per_sec']:.0f} examples/s, val_accuracy "
                      f"{r['val_accuracy']:.4f}, {r['seconds_to_first_step']:.1f} s to the first step", flush=True)
    print(f"\n{args.config} {' '.join(args.overrides)}, {args.rounds} rounds\n")
    print("| cluster | examples/s (median) | val_accuracy | launch to first step, s (median) |\n|---|---|---|---|")
    for kind, rs in rows.items():
        accuracies = ", ".join(sorted({format(r["val_accuracy"], ".4f") for r in rs}))
        print(f"| {kind} | {statistics.median(r['examples_per_sec'] for r in rs):.0f} | {accuracies} | "
              f"{statistics.median(r['seconds_to_first_step'] for r in rs):.1f} |")
    ratios = [h["examples_per_sec"] / lo["examples_per_sec"] for lo, h in zip(*rows.values())]
    print(f"\nthroughput, emulated hosts / loopback: {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
