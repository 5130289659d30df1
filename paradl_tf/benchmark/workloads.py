"""The workloads the benchmark trains (a model config and its data) and what each costs, from its config alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from paradl_tf.config import Config

Widen = Callable[[dict, int], dict]


@dataclass(frozen=True)
class Workload:
    """A reference model and its data; `width` is swept by `widen(model, width)`."""

    name: str
    title: str
    model: dict
    data: dict
    steps: int
    """Steps per epoch at the default batch and width (full mode); scaled so every epoch does similar work."""
    width: int
    """The default width (MLP: first hidden layer; CNN: filters of the last conv; inception: branch filters)."""
    widen: Widen
    batch: int = 64
    sweep_data: dict | None = None
    """Data for the batch sweep (enough examples for the largest batch); default: `data`."""


def _mlp_width(model: dict, w: int) -> dict:
    return {**model, "hidden": [w, max(w // 2, 1)]}


def _cnn_width(model: dict, w: int) -> dict:
    return {**model, "filters": [max(w // 2, 1), w]}


def _inception_width(model: dict, w: int) -> dict:
    return {**model, "branch_filters": w}


def _wide_mlp_width(model: dict, w: int) -> dict:
    return {**model, "hidden": [w, w]}


_TABULAR_64 = {"kind": "synthetic_tabular", "features": 64, "num_classes": 10, "train_examples": 4096,
               "validation_examples": 128}
_IMAGES_32 = {"kind": "synthetic_images", "image_shape": [32, 32, 3], "num_classes": 10, "train_examples": 4096,
              "validation_examples": 128}

WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("mlp", "digits MLP (8x8 images, hidden 128-64)", {"kind": "mlp", "hidden": [128, 64]},
             {"kind": "digits", "validation_split": 0.1}, steps=200, width=128, widen=_mlp_width,
             sweep_data=_TABULAR_64),
    Workload("cnn", "small CNN (32x32x3 synthetic images, filters 32-64)",
             {"kind": "cnn", "filters": [32, 64], "kernel_size": 3, "dense": 128}, _IMAGES_32, steps=30, width=64,
             widen=_cnn_width),
    Workload("inception", "inception-style (32x32x3 synthetic images, 2 blocks of 4 branches)",
             {"kind": "inception", "stem_filters": 32, "blocks": 2, "branch_filters": 16}, _IMAGES_32, steps=12,
             width=16, widen=_inception_width),
    # Compute-bound where the digits MLP is dispatch-bound (0.2 ms steps): the precision section's MLP.
    Workload("mlp_wide", "wide MLP (256 features, hidden 1024-1024)", {"kind": "mlp", "hidden": [1024, 1024]},
             {**_TABULAR_64, "features": 256}, steps=60, width=1024, widen=_wide_mlp_width, batch=256),
]}

# Small enough for a test to run the whole pipeline in about a minute.
TINY_WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("mlp", "tiny MLP (digits, hidden 16-8)", {"kind": "mlp", "hidden": [16, 8]},
             {"kind": "digits", "validation_split": 0.1}, steps=10, width=16, widen=_mlp_width, batch=32,
             sweep_data={**_TABULAR_64, "train_examples": 256, "validation_examples": 32}),
]}


def model_cost(model: dict, input_shape: Sequence[int], classes: int) -> dict[str, int]:
    """Parameters and forward FLOPs per example (2 per multiply-add) of a paradl_tf model config.

    Counts the matmuls and convolutions, which dominate; activations and pooling are left out.
    A training step costs about 3x the forward pass (forward, gradients of inputs and of weights)."""
    model = with_defaults("model", model)
    kind = model["kind"]
    if kind == "mlp":
        sizes = [int(_prod(input_shape)), *model["hidden"], classes]
        params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        return {"params": params, "forward_flops": sum(2 * a * b for a, b in zip(sizes, sizes[1:]))}
    h, w, c = input_shape
    layers: list[tuple[int, int, int, int]] = []  # (kernel, c_in, c_out, output positions)
    if kind == "cnn":
        k = model["kernel_size"]
        for filters in model["filters"]:
            layers.append((k, c, filters, h * w))
            c = filters
            if h >= 2 and w >= 2:
                h, w = h // 2, w // 2
        layers += [(1, h * w * c, model["dense"], 1), (1, model["dense"], classes, 1)]
    elif kind == "inception":
        f, stem = model["branch_filters"], model["stem_filters"]
        r, hw = f // 2 or 1, h * w
        layers.append((3, c, stem, hw))
        c = stem
        for _ in range(model["blocks"]):
            layers += [(1, c, f, hw), (1, c, r, hw), (3, r, f, hw), (1, c, r, hw), (5, r, f, hw), (1, c, f, hw)]
            c = 4 * f
        layers.append((1, c, classes, 1))
    else:
        raise ValueError(f"no cost model for model kind {kind!r}")
    params = sum(k * k * ci * co + co for k, ci, co, _ in layers)
    return {"params": params, "forward_flops": sum(2 * k * k * ci * co * n for k, ci, co, n in layers)}


def with_defaults(section: str, value: dict) -> dict:
    """A config section as a dict with every default filled in, from the config schema."""
    return getattr(Config.model_validate({section: value}), section).model_dump(mode="json")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def input_shape(data: dict) -> tuple[list[int], int]:
    """(example shape, classes) of a paradl_tf data config."""
    data = with_defaults("data", data)
    if data["kind"] == "digits":
        return [8, 8, 1], 10
    if data["kind"] == "synthetic_images":
        return list(data["image_shape"]), data["num_classes"]
    if data["kind"] == "synthetic_tabular":
        return [data["features"]], data["num_classes"]
    raise ValueError(f"no shape for data kind {data['kind']!r}")
