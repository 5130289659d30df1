"""Model-parallel placement plans: pure functions from layer descriptions and device names to stages.

No TensorFlow here. A plan is computed, and tested, from plain strings and numbers:

    layers = [LayerInfo("hidden_0", param_bytes=33_280, inputs=("inputs",)), LayerInfo("logits", ...)]
    stages = auto_stages(layers, ["/device:CPU:0", "/device:CPU:1"], balance="params")
    table = stage_table(layers, stages, microbatches=4)

`layers` are in topological order (every layer after the layers it reads); a name in
`inputs` that is no layer's name is a model input. paradl_tf.model_parallel.placed describes a
Keras model this way and builds the model the plan says.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

from paradl_tf.errors import ConfigError

KEY = "strategy.placement"


@dataclass(frozen=True)
class LayerInfo:
    """What placement needs to know about one layer; sizes per example where they scale with the batch."""

    name: str
    params: int = 0
    param_bytes: int = 0
    flops: int = 0
    """Estimated forward FLOPs per example."""
    output_bytes: int = 0
    """Bytes of the layer's output activation per example."""
    inputs: tuple[str, ...] = ()
    """Names of the layers (or model inputs) whose outputs this layer reads."""


@dataclass(frozen=True)
class Stage:
    """Layers that run, with their variables, on one device."""

    device: str
    layers: tuple[str, ...]


# ---------------------------------------------------------------- auto: contiguous balanced stages
def auto_stages(layers: Sequence[LayerInfo], devices: Sequence[str], balance: str = "params") -> list[Stage]:
    """Split the layers, in order, into len(devices) contiguous stages with the smallest largest stage.

    Sizes are parameter bytes (`balance="params"`) or FLOPs (`"flops"`). Among the splits with
    that smallest maximum, the one that sends the fewest activation bytes between stages wins.
    """
    n = len(devices)
    if balance not in ("params", "flops"):
        raise ConfigError(f"{KEY}.balance must be params or flops. Received: {KEY}.balance={balance!r}")
    if len(layers) < n:
        raise ConfigError(
            f"{KEY}.devices: {n} contiguous stages need at least {n} layers, but the model has {len(layers)}. "
            f"Received: {KEY}.devices={n}"
        )
    sizes = [layer.param_bytes if balance == "params" else layer.flops for layer in layers]
    largest = _smallest_largest_stage(sizes, n)
    cuts = _fewest_bytes_cuts(sizes, n, largest, _cut_bytes(layers))
    bounds = [0, *cuts, len(layers)]
    names = [layer.name for layer in layers]
    return [Stage(devices[i], tuple(names[bounds[i] : bounds[i + 1]])) for i in range(n)]


def _smallest_largest_stage(sizes: list[int], n: int) -> int:
    """The least possible size of the largest of n contiguous non-empty groups (dynamic programming)."""
    prefix = _prefix_sums(sizes)
    inf = float("inf")
    # best[k][i]: least largest group when the first i sizes form k groups.
    best = [[inf] * (len(sizes) + 1) for _ in range(n + 1)]
    best[0][0] = 0
    for k in range(1, n + 1):
        for i in range(k, len(sizes) + 1):
            best[k][i] = min(max(best[k - 1][j], prefix[i] - prefix[j]) for j in range(k - 1, i))
    return int(best[n][len(sizes)])


def _fewest_bytes_cuts(sizes: list[int], n: int, limit: int, cut_bytes: list[int]) -> list[int]:
    """Cut positions of n groups, each at most `limit`, that send the fewest activation bytes."""
    prefix = _prefix_sums(sizes)
    inf = float("inf")
    cost = [[inf] * (len(sizes) + 1) for _ in range(n + 1)]
    back = [[0] * (len(sizes) + 1) for _ in range(n + 1)]
    cost[0][0] = 0
    for k in range(1, n + 1):
        for i in range(k, len(sizes) + 1):
            for j in range(k - 1, i):
                if prefix[i] - prefix[j] > limit or cost[k - 1][j] == inf:
                    continue
                c = cost[k - 1][j] + (cut_bytes[j] if j else 0)
                if c < cost[k][i]:
                    cost[k][i], back[k][i] = c, j
    cuts, i = [], len(sizes)
    for k in range(n, 1, -1):
        i = back[k][i]
        cuts.append(i)
    return cuts[::-1]


def _prefix_sums(values: list[int]) -> list[int]:
    out = [0]
    for v in values:
        out.append(out[-1] + v)
    return out


def _cut_bytes(layers: Sequence[LayerInfo]) -> list[int]:
    """cut[j]: activation bytes per example that cross a cut just before layer j."""
    position = {layer.name: i for i, layer in enumerate(layers)}
    last_reader: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for src in layer.inputs:
            if src in position:
                last_reader[src] = i
    cut = [0] * (len(layers) + 1)
    for src, reader in last_reader.items():
        for j in range(position[src] + 1, reader + 1):
            cut[j] += layers[position[src]].output_bytes
    return cut


# ---------------------------------------------------------------- stages: explicit
def explicit_stages(layers: Sequence[LayerInfo], stages: Sequence[tuple[str, Sequence[str | int]]]) -> list[Stage]:
    """Stages as the config lists them: (device, layer names, indices or inclusive ranges 'a..b').

    A layer named in no stage runs on the stage of the first layer it reads (stage 0 when it
    reads only model inputs), so weightless layers such as Flatten need not be listed.
    """
    names = [layer.name for layer in layers]
    owner: dict[str, int] = {}
    for s, (_, items) in enumerate(stages):
        for item in items:
            for name in _resolve_item(item, names, f"{KEY}.stages[{s}].layers"):
                if name in owner:
                    raise ConfigError(
                        f"{KEY}.stages[{s}].layers: layer {name!r} is already in stage {owner[name]}; "
                        f"a layer runs on one device. Received: {KEY}.stages[{s}].layers={list(items)!r}"
                    )
                owner[name] = s
    for layer in layers:
        if layer.name not in owner:
            owner[layer.name] = next((owner[src] for src in layer.inputs if src in owner), 0)
    return [Stage(device, tuple(n for n in names if owner[n] == s)) for s, (device, _) in enumerate(stages)]


def _resolve_item(item: str | int, names: list[str], key: str) -> list[str]:
    """Layer names for one `layers` entry: a name, an index, or an inclusive range 'first..last'."""
    if isinstance(item, str) and ".." in item:
        first, _, last = item.partition("..")
        start, stop = _layer_index(first.strip(), names, key, item), _layer_index(last.strip(), names, key, item)
        if stop < start:
            raise ConfigError(f"{key}: range {item!r} runs backwards ({start} > {stop}). Received: {key} entry {item!r}")
        return names[start : stop + 1]
    return [names[_layer_index(item, names, key, item)]]


def _layer_index(ref: str | int, names: list[str], key: str, item: str | int) -> int:
    if isinstance(ref, str) and ref.lstrip("-").isdigit():
        ref = int(ref)
    if isinstance(ref, int):
        if not 0 <= ref < len(names):
            raise ConfigError(
                f"{key}: layer index {ref} is out of range; the model has {len(names)} layers (0..{len(names) - 1}). "
                f"Received: {key} entry {item!r}"
            )
        return ref
    if ref not in names:
        close = difflib.get_close_matches(ref, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ConfigError(
            f"{key}: unknown layer {ref!r}{hint} Layers: {', '.join(names)}. Received: {key} entry {item!r}"
        )
    return names.index(ref)


# ---------------------------------------------------------------- branches: parallel paths
def find_branches(layers: Sequence[LayerInfo]) -> list[list[list[str]]]:
    """For each merge layer (a layer reading two or more layers), the layers of each path into it.

    A path runs back from one input of the merge through layers that read one layer and feed
    only the next, and stops at the fork, the layer that feeds several paths. An input that
    is the fork itself (a residual connection) gives an empty path.
    """
    by_name = {layer.name: layer for layer in layers}
    readers: dict[str, int] = {}
    for layer in layers:
        for src in layer.inputs:
            readers[src] = readers.get(src, 0) + 1
    merges = []
    for layer in layers:
        if len(layer.inputs) < 2:
            continue
        paths = []
        for src in layer.inputs:
            path = []
            while src in by_name and readers.get(src, 0) == 1 and len(by_name[src].inputs) == 1:
                path.append(src)
                src = by_name[src].inputs[0]
            paths.append(path[::-1])
        merges.append(paths)
    return merges


def branch_stages(layers: Sequence[LayerInfo], devices: Sequence[str], trunk_device: str | None = None) -> list[Stage]:
    """Path j into every merge layer on devices[j % len(devices)]; all other layers on the trunk device.

    The trunk (the layers before the fork, the merges, and what follows) goes on `trunk_device`,
    by default devices[0]. One stage per device, in the order of `devices`.
    """
    merges = find_branches(layers)
    if not any(len([p for p in paths if p]) >= 2 for paths in merges):
        raise ConfigError(
            f"{KEY}.kind: branches needs a model with independent parallel paths joined by a layer such as "
            "Concatenate (the inception model); this model has none: use kind: auto or stages. "
            f"Received: {KEY}.kind='branches'"
        )
    trunk = trunk_device or devices[0]
    device_of = {layer.name: trunk for layer in layers}
    for paths in merges:
        for j, path in enumerate(paths):
            for name in path:
                device_of[name] = devices[j % len(devices)]
    order = list(dict.fromkeys([*devices, trunk]))
    return [Stage(d, tuple(l.name for l in layers if device_of[l.name] == d)) for d in order]


# ---------------------------------------------------------------- the table plan and results show
def stage_table(
    layers: Sequence[LayerInfo], stages: Sequence[Stage], microbatches: int = 1, pipelined: bool = True
) -> dict:
    """Per stage: device, layers, parameters, parameter bytes, FLOPs and activation bytes sent on per example.

    `balance` is the largest stage's parameter bytes over the mean. `idle_fraction` is the share
    of the step a stage waits in a pipeline of S stages and M micro-batches, (S-1)/(M+S-1);
    None when the stages are not a chain (`pipelined=False`, branches side by side).
    """
    by_name = {layer.name: layer for layer in layers}
    stage_of = {name: i for i, stage in enumerate(stages) for name in stage.layers}
    rows = []
    for i, stage in enumerate(stages):
        members = [by_name[n] for n in stage.layers]
        rows.append({
            "stage": i,
            "device": stage.device,
            "layers": list(stage.layers),
            "params": sum(m.params for m in members),
            "parameter_bytes": sum(m.param_bytes for m in members),
            "flops_per_example": sum(m.flops for m in members),
            "sends_bytes_per_example": _sent_bytes(i, layers, stage_of),
        })
    s = len(stages)
    return {
        "stages": rows,
        "balance": balance_ratio([r["parameter_bytes"] for r in rows]),
        "microbatches": microbatches,
        "idle_fraction": (s - 1) / (microbatches + s - 1) if pipelined else None,
    }


def balance_ratio(sizes: Sequence[int]) -> float:
    """Largest over mean (1.0 is perfect balance)."""
    mean = sum(sizes) / len(sizes) if sizes else 0
    return max(sizes) / mean if mean else 1.0


def _sent_bytes(index: int, layers: Sequence[LayerInfo], stage_of: dict[str, int]) -> int:
    """Bytes of stage `index`'s outputs that other stages read: each tensor once per reading stage."""
    output_bytes = {layer.name: layer.output_bytes for layer in layers}
    sent = {
        (src, stage_of[layer.name])
        for layer in layers
        for src in layer.inputs
        if stage_of.get(src) == index and stage_of[layer.name] != index
    }
    return sum(output_bytes[src] for src, _ in sent)
