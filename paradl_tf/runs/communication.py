"""Communication cost models: what each method sends per step, and how long a link of a given bandwidth takes.

`plan --link=25Gbit` puts these beside a measured compute time, so a user sees before renting a cluster whether
the network will dominate a step. The models (docs/sync-or-async.md has the derivations):

- ring all-reduce of S bytes over n peers: each peer sends and receives 2(n-1)/n * S, so it takes
  2(n-1)/n * S / B (NCCL's bus-bandwidth definition, nccl-tests doc/PERFORMANCE.md);
- parameter servers: each worker pulls the variables and pushes the gradients through its link every step, and the
  ps link carries that for every worker, pulls out and pushes in at once (full duplex);
- model parallel: each stage boundary carries the activations forward and their gradients back, per example.

Pure Python (no TensorFlow): the bench's network part prints the same models beside its measurements.
"""

from __future__ import annotations

import re
from typing import Any

from paradl_tf.cluster.spec import REQUIRED_JOBS
from paradl_tf.errors import ConfigError

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit/s|bit|bps)\s*$", re.IGNORECASE)


def parse_bandwidth(text: str, key: str = "--link") -> float:
    """'25Gbit', '100Mbit', '1.5gbit/s' -> bits per second (decimal units, as tc writes them)."""
    match = _BANDWIDTH.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{key}: cannot read {text!r} as a bandwidth; give bits per second with a unit, "
                          f"e.g. 25Gbit, 100Mbit or 10Mbit")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def format_bandwidth(bits_per_s: float) -> str:
    for prefix in ("T", "G", "M", "k"):
        if bits_per_s >= _UNITS[prefix.lower()]:
            return f"{bits_per_s / _UNITS[prefix.lower()]:g}{prefix}bit"
    return f"{bits_per_s:g}bit"


COMPUTE_FROM = ("device", "cluster")
"""Where `plan --link` takes a step's compute time from: one device here, or the config's cluster run here."""


def check_compute(strategy: str, compute: str, link: str | None) -> None:
    """A bad `--compute` is refused before TensorFlow starts and before any cluster does."""
    if compute not in COMPUTE_FROM:
        raise ConfigError(f"--compute: {compute!r} is not one of {', '.join(COMPUTE_FROM)}")
    if compute != "device" and not link:
        raise ConfigError(f"--compute={compute}: the compute time is measured for --link alone; give --link too")
    if compute == "cluster" and strategy not in REQUIRED_JOBS:  # the strategies that run a cluster
        raise ConfigError(f"--compute=cluster: strategy.kind={strategy} runs in one process, with no "
                          f"cluster to run; use --compute=device")


def ring_all_reduce_bytes(size: int, peers: int) -> float:
    """Bytes each peer sends (and receives) to all-reduce `size` bytes over a ring of `peers`: 2(n-1)/n * S."""
    return 2 * (peers - 1) / peers * size if peers > 1 else 0.0


def seconds(size: float, bits_per_s: float) -> float:
    return size * 8 / bits_per_s


def predict(p: dict[str, Any], bits_per_s: float, compute_s: float | None = None,
            compute_source: str = "") -> dict[str, Any]:
    """The communication of one training step of plan `p` over links of `bits_per_s`, next to `compute_s`."""
    items = _timed(_ITEMS[p["strategy"]](p), bits_per_s)
    return {"link": format_bandwidth(bits_per_s), "link_bits_per_s": bits_per_s, "items": items,
            "compute_seconds_per_step": compute_s, "compute_source": compute_source, **_shares(items, compute_s)}


def _timed(items: list[dict], bits_per_s: float) -> list[dict]:
    return [{**i, "seconds_per_step": seconds(i["bytes_per_step"], bits_per_s)} for i in items]


def _shares(items: list[dict], compute_s: float | None) -> dict[str, Any]:
    """The step's communication time (items that lie on every step's critical path) and its share of the step,
    assuming no overlap with compute (Keras all-reduces after the backward pass, in one packed collective)."""
    comm = sum(i["seconds_per_step"] for i in items if i["on_step"])
    out = {"communication_seconds_per_step": comm}
    if compute_s is not None:
        out["step_seconds"] = compute_s + comm
        out["communication_share"] = comm / (compute_s + comm) if compute_s + comm > 0 else 0.0
    return out


def _none(p: dict) -> list[dict]:
    return []


def _mirrored(p: dict) -> list[dict]:
    n, size = p["replicas"], p["gradient_bytes"]
    return [{"what": f"all-reduce (ring over {n} devices, each on its own link, e.g. NVLink or NCCL over PCIe)",
             "formula": "2(n-1)/n * S / B", "bytes": size, "peers": n,
             "bytes_per_step": ring_all_reduce_bytes(size, n), "on_step": True}]


def _multi_worker(p: dict) -> list[dict]:
    workers = len(p["cluster"]["tasks"]["worker"])
    size = p["gradient_bytes"]
    return [{"what": f"all-reduce across {workers} worker hosts (ring, one link per host)",
             "formula": "2(n-1)/n * S / B", "bytes": size, "peers": workers,
             "bytes_per_step": ring_all_reduce_bytes(size, workers), "on_step": True}]


def _parameter_server(p: dict) -> list[dict]:
    workers = len(p["cluster"]["tasks"]["worker"])
    pulled, pushed = p["parameter_bytes"], p["gradient_bytes"]
    busiest = max(p["ps_bytes"].values()) / max(p["parameter_bytes"], 1)  # the busiest ps's share of the bytes
    return [
        {"what": "each worker pulls the variables and pushes the gradients through its link",
         "formula": "(S_pull + S_push) / B", "bytes": pulled + pushed, "peers": workers,
         "bytes_per_step": pulled + pushed, "on_step": True},
        # A link is full duplex: the ps sends the pulls while it receives the pushes, so the busier direction
        # bounds it (adding the two overstated the bound 2x: 1.55 measured/model at 10 Mbit, bench/network_quick).
        {"what": f"the busiest ps link, for one step of each of the {workers} workers, pulls out and pushes in at "
                 f"once (bounds the cluster's steps/s at B / bytes)",
         "formula": "P * share * max(S_pull, S_push) / B", "bytes": max(pulled, pushed), "peers": workers,
         "bytes_per_step": workers * busiest * max(pulled, pushed), "on_step": False},
    ]


def _model_parallel(p: dict) -> list[dict]:
    return _activations(p["placement"]["stages"], p["global_batch_size"])


def _activations(stages: list[dict], batch: int) -> list[dict]:
    """Each stage boundary: the activations forward and their gradients back (same size), for the whole batch."""
    per_example = sum(s["sends_bytes_per_example"] for s in stages)
    if not per_example:
        return []
    return [{"what": f"activations between {len(stages)} stages, forward and their gradients back",
             "formula": "2 * batch * sum(stage sends per example) / B", "bytes": per_example * batch,
             "peers": len(stages), "bytes_per_step": 2 * per_example * batch, "on_step": True}]


def _hybrid(p: dict) -> list[dict]:
    mesh = p["placement"]
    groups = mesh["replicas"]
    first = [s for s in mesh["stages"] if s["group"] == 0]
    largest = max((s["all_reduce_bytes_per_step"] for s in first), default=0)
    # Each stage reduces with its peers in the other groups at the same time, over its own link: the largest
    # stage's ring sets the time.
    reduce = [{"what": f"per-stage all-reduce (ring over {groups} groups; stages side by side, the largest shown)",
               "formula": "2(R-1)/R * S_stage / B", "bytes": largest, "peers": groups,
               "bytes_per_step": ring_all_reduce_bytes(largest, groups), "on_step": True}]
    return reduce + _activations(first, p["global_batch_size"] // groups)


_ITEMS = {
    "default": _none, "one_device": _none, "mirrored": _mirrored, "multi_worker_mirrored": _multi_worker,
    "parameter_server": _parameter_server, "model_parallel": _model_parallel, "hybrid": _hybrid,
}


def format_communication(c: dict[str, Any]) -> list[str]:
    """Plan lines: per item bytes and seconds per step, then compute and the network's share of the step."""
    lines = [f"communication over {c['link']} links (per step, no overlap with compute assumed):"]
    if not c["items"]:
        lines.append("  none: one device, nothing crosses a link")
    for i in c["items"]:
        lines.append(f"  {i['what']}: {i['bytes_per_step']:.0f} bytes, {i['seconds_per_step'] * 1e3:.3f} ms "
                     f"[{i['formula']}]")
    compute = c["compute_seconds_per_step"]
    if compute is None:
        lines.append(f"  communication {c['communication_seconds_per_step'] * 1e3:.3f} ms per step")
    else:
        lines.append(f"  compute {compute * 1e3:.3f} ms per step ({c['compute_source']}); communication "
                     f"{c['communication_seconds_per_step'] * 1e3:.3f} ms, {c['communication_share']:.0%} of the step")
    return lines
