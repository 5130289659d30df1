"""Model parallel: a Keras model cut into stages, each stage's variables and computation pinned with tf.device.

    paradl-tf train --config=configs/model_parallel.yaml       # auto: 2 balanced stages
    paradl-tf plan --config=configs/pipeline.yaml              # the placement table, without training

    # A user's own functional model, placed by hand (Keras 3 or tf_keras):
    stages = [Stage("/device:GPU:0", ("conv_0", "conv_1")), Stage("/device:GPU:1", ("dense", "logits"))]
    placed = place_model(model, stages, keras, microbatches=4)
    compile_model(placed, train_cfg, keras, jit_compile=False)
    build_optimizer_on_stage_devices(placed)

How: the model from the config is built once, on the default device, as the reference. Its
layers are cloned from their configs in topological order; each clone is built and called
under tf.device(its stage's device), so its variables and its ops live there, and it takes
the reference's weights, so the placed model computes what the reference computes. The
placed model's train_step differentiates with tf.gradients, which puts each gradient op on
the device of its forward op; with pipeline.microbatches M > 1 it runs the batch as M
micro-batches and sums their gradients before one optimizer update (GPipe).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from paradl_tf.builders.devices import canonical_device, existing_device, select_devices
from paradl_tf.errors import ConfigError
from paradl_tf.builders.models import compile_model
from paradl_tf.model_parallel.placement import (
    LayerInfo, Stage, auto_stages, balance_ratio, branch_stages, explicit_stages, stage_table,
)
from paradl_tf.builders.precision import dtype_name

KEY = "strategy.placement"


# ================================================================ from config to a compiled, placed model
def compile_placed_model(model, cfg, keras: ModuleType):
    """The placed, compiled model that `cfg.strategy` (kind model_parallel) describes, and its placement table."""
    layers = describe_layers(model)
    stages = plan_stages(cfg.strategy, cfg.devices, layers)
    placed = place_model(model, stages, keras, cfg.strategy.pipeline.microbatches)
    # XLA ignores tf.device and compiles the whole step for one device (tensorflow/tensorflow#124880);
    # Keras 3's jit_compile="auto" turns XLA on when a GPU is present.
    compile_model(placed, cfg.train, keras, jit_compile=False)
    build_optimizer_on_stage_devices(placed)
    summary = placement_summary(placed, layers, stages, cfg.strategy)
    # Activations cross devices in the dtype the layers compute in (sends_bytes_per_example counts them so):
    # bfloat16 and float16 halve the bytes sent.
    summary["activation_dtypes"] = sent_dtypes(model, layers, stages)
    return placed, summary


def sent_dtypes(model, layers: Sequence[LayerInfo], stages: Sequence[Stage]) -> list[str]:
    """The dtypes of the layer outputs that another stage reads."""
    stage_of = {name: i for i, stage in enumerate(stages) for name in stage.layers}
    sent = {src for layer in layers for src in layer.inputs
            if stage_of.get(src, stage_of[layer.name]) != stage_of[layer.name]}
    return sorted({dtype_name(t.dtype) for src in sent for t in tf.nest.flatten(model.get_layer(src).output)})


def plan_stages(strategy_cfg, devices_cfg, layers: Sequence[LayerInfo]) -> list[Stage]:
    """The stages `strategy.placement` asks for, on existing logical devices."""
    p = strategy_cfg.placement
    if p.kind == "auto":
        return auto_stages(layers, select_devices(p.devices, devices_cfg.type, f"{KEY}.devices"), p.balance)
    if p.kind == "stages":
        stages = [(existing_device(s.device, f"{KEY}.stages[{i}].device"), s.layers) for i, s in enumerate(p.stages)]
        return explicit_stages(layers, stages)
    if p.kind == "branches":
        trunk = existing_device(p.trunk_device, f"{KEY}.trunk_device") if p.trunk_device else None
        return branch_stages(layers, select_devices(p.devices, devices_cfg.type, f"{KEY}.devices"), trunk)
    raise ConfigError(f"{KEY}.kind: unknown placement kind {p.kind!r}; choose one of: stages, auto, branches")


# ================================================================ describing a Keras model
@dataclass(frozen=True)
class _Node:
    """One layer call of the functional graph: what it reads and where it runs."""

    name: str
    device: str
    inputs: tuple[tuple[str, int | None], ...]
    """(producer, index into its outputs or None for its only output)."""
    packed: bool
    """Called on a list of tensors (Concatenate, Add) rather than on one tensor."""


@dataclass(frozen=True)
class _Graph:
    layers: list
    inputs: dict[str, tuple[tuple[str, int | None], ...]]
    packed: dict[str, bool]
    model_inputs: list[str]
    model_outputs: list[tuple[str, int | None]]


def _layer_graph(model) -> _Graph:
    """The layers of a functional model in topological order, with the tensors each one reads.

    Uses only public attributes (model.inputs/outputs, layer.input/output), the same in Keras 3
    and tf_keras. Each layer must be called once, on one tensor or on a list of tensors.
    """
    ref: dict[int, tuple[str, int | None]] = {}
    layers = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            ref[id(layer.output)] = (layer.name, None)
        else:
            layers.append(layer)
    for i, tensor in enumerate(model.inputs):
        ref.setdefault(id(tensor), (f"input_{i}", None))
    for layer in layers:
        out = layer.output
        for k, tensor in enumerate(out) if isinstance(out, (list, tuple)) else [(None, out)]:
            ref[id(tensor)] = (layer.name, k)
    inputs, packed = {}, {}
    for layer in layers:
        read = layer.input
        packed[layer.name] = isinstance(read, (list, tuple))
        refs = []
        for tensor in read if packed[layer.name] else [read]:
            if id(tensor) not in ref:
                raise ConfigError(
                    f"{KEY}: cannot place layer {layer.name!r}: it reads a tensor that no layer of the model produces "
                    "on its first call (a layer called more than once, or an operation that is not a layer); "
                    "model parallel places functional models whose layers are each called once"
                )
            refs.append(ref[id(tensor)])
        inputs[layer.name] = tuple(refs)
    outputs = [ref[id(t)] for t in model.outputs]
    return _Graph(_topological(layers, inputs), inputs, packed, [ref[id(t)][0] for t in model.inputs], outputs)


def _topological(layers: list, inputs: dict) -> list:
    """Layers ordered so that each comes after the layers it reads (stable: model.layers order otherwise)."""
    done: set[str] = set()
    names = {layer.name for layer in layers}
    ordered, pending = [], list(layers)
    while pending:
        ready = next(l for l in pending if all(src not in names or src in done for src, _ in inputs[l.name]))
        ordered.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return ordered


def describe_layers(model) -> list[LayerInfo]:
    """Name, parameters, parameter bytes, FLOPs and output bytes per example, and inputs of each layer."""
    graph = _layer_graph(model)
    return [
        LayerInfo(
            name=layer.name,
            params=sum(_size(w) for w in layer.weights),
            param_bytes=sum(_size(w) * tf.as_dtype(w.dtype).size for w in layer.weights),
            flops=_flops(layer),
            output_bytes=sum(_size(t, True) * tf.as_dtype(t.dtype).size for t in tf.nest.flatten(layer.output)),
            inputs=tuple(dict.fromkeys(src for src, _ in graph.inputs[layer.name])),
        )
        for layer in graph.layers
    ]


def _flops(layer) -> int:
    """Forward FLOPs per example: 2 x kernel size per output position for layers with a kernel, else 1 per output value."""
    out = tf.nest.flatten(layer.output)[0]
    kernel = getattr(layer, "kernel", None)
    if kernel is not None and len(out.shape) >= 2:
        positions = int(np.prod([d or 1 for d in out.shape[1:-1]], dtype=np.int64))
        return 2 * _size(kernel) * positions
    return sum(_size(t, skip_batch=True) for t in tf.nest.flatten(layer.output))


def _size(tensor, skip_batch: bool = False) -> int:
    dims = list(tensor.shape)[1 if skip_batch else 0 :]
    return int(np.prod([d or 1 for d in dims], dtype=np.int64))


# ================================================================ building the placed model
def place_model(model, stages: Sequence[Stage], keras: ModuleType, microbatches: int = 1, name: str | None = None):
    """A Keras model that computes what the functional `model` computes, each layer on its stage's device.

    Each layer is cloned from its config, built under tf.device(stage.device) (so its variables
    are created there) and given `model`'s weights. Layers named in no stage are an error.
    """
    graph = _layer_graph(model)
    device_of = {name: stage.device for stage in stages for name in stage.layers}
    missing = [layer.name for layer in graph.layers if layer.name not in device_of]
    if missing:
        raise ConfigError(f"{KEY}: layers in no stage: {', '.join(missing)}; give every layer a device")
    nodes = [_Node(l.name, device_of[l.name], graph.inputs[l.name], graph.packed[l.name]) for l in graph.layers]
    clones = [_clone(layer) for layer in graph.layers]
    cls = _placed_model_class(keras)
    placed = cls(nodes, clones, graph.model_inputs, graph.model_outputs, microbatches, name=name or f"{model.name}_placed")
    placed.build_on_devices([tf.zeros([1] + [d or 1 for d in t.shape[1:]], t.dtype) for t in model.inputs])
    for layer, clone in zip(graph.layers, clones):
        clone.set_weights(layer.get_weights())
    return placed


def _clone(layer):
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as exc:  # a user layer without get_config/from_config
        raise ConfigError(
            f"{KEY}: cannot clone layer {layer.name!r} ({type(layer).__name__}) from its config to build it on its "
            f"device: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; give the layer a get_config()"
        ) from None


def build_optimizer_on_stage_devices(model) -> None:
    """Create the optimizer's slot variables (Adam's m and v, momentum) on the devices of their model variables.

    Keras 3 builds the optimizer eagerly before the first step, where the default strategy's
    colocate_vars_with has no effect, so every slot would land on the default device (the
    lazily-created-slot placement of tensorflow/tensorflow#26244). Create each under its variable's device.
    """
    optimizer = model.optimizer
    create = optimizer.add_variable_from_reference

    def on_device(*args, **kwargs):
        reference = args[0] if args else kwargs.get("reference_variable", kwargs.get("model_variable"))
        with tf.device(tf_variable(reference).device):
            return create(*args, **kwargs)

    optimizer.add_variable_from_reference = on_device
    try:
        optimizer.build(model.trainable_variables)
    finally:
        del optimizer.add_variable_from_reference


def tf_variable(variable) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (`.value`); a tf_keras variable is one already."""
    value = getattr(variable, "value", variable)
    return variable if callable(value) else value


_CLASSES: dict[tuple, type] = {}


def model_class_for(keras: ModuleType, define) -> type:
    """The model class `define(keras, keras3)` makes for this Keras, defined once per Keras (Keras 3 and tf_keras
    differ in compute_loss and the loss metric, so each gets its own subclass of its own keras.Model)."""
    key = (define, keras.__name__)
    if key not in _CLASSES:
        _CLASSES[key] = define(keras, keras3=keras.__name__ == "keras")
    return _CLASSES[key]


def _placed_model_class(keras: ModuleType) -> type:
    """PlacedModel for this Keras."""
    return model_class_for(keras, _define_placed_model)


def _define_placed_model(keras: ModuleType, keras3: bool) -> type:
    class PlacedModel(keras.Model):
        """A functional graph run layer by layer, each layer under tf.device(its stage's device)."""

        def __init__(self, nodes, layers, model_inputs, model_outputs, microbatches=1, **kwargs):
            super().__init__(**kwargs)
            self.placed_nodes = tuple(nodes)
            self.placed_layers = list(layers)
            self.placed_inputs = tuple(model_inputs)
            self.placed_outputs = tuple(model_outputs)
            self.microbatches = microbatches

        def call(self, inputs, training=None):
            values = dict(zip(self.placed_inputs, tf.nest.flatten(inputs)))
            for node, layer in zip(self.placed_nodes, self.placed_layers):
                args = [_pick(values, ref) for ref in node.inputs]
                with tf.device(node.device):
                    values[node.name] = layer(args if node.packed else args[0], training=training)
            outputs = [_pick(values, ref) for ref in self.placed_outputs]
            return outputs[0] if len(outputs) == 1 else outputs

        def build_on_devices(self, example_inputs) -> None:
            # Call each layer eagerly under its device. Left to Keras 3, an unbuilt model is built by
            # tracing call() in a StatelessScope (Layer._maybe_build -> compute_output_spec), which
            # defers creating the variables until the scope exits, outside every tf.device: they
            # would all land on the default device.
            self.call(example_inputs if len(example_inputs) > 1 else example_inputs[0], training=False)
            self(example_inputs if len(example_inputs) > 1 else example_inputs[0], training=False)

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            variables = self.trainable_variables
            total = None
            for k in range(self.microbatches):  # unrolled: stages overlap wherever the dataflow allows
                part = microbatch((x, y, sample_weight), k, self.microbatches)
                grads = self._microbatch_gradients(*part, variables)
                total = grads if total is None else [add_gradients(a, b, v) for a, b, v in zip(total, grads, variables)]
            if self.microbatches > 1:
                total = [None if g is None else g / self.microbatches for g in total]
            if not keras3 and hasattr(self.optimizer, "get_unscaled_gradients"):  # tf_keras mixed_float16
                total = [None if g is None else self.optimizer.get_unscaled_gradients([g])[0] for g in total]
            self.optimizer.apply_gradients([(g, v) for g, v in zip(total, variables) if g is not None])
            return self.get_metrics_result()

        def _microbatch_gradients(self, x, y, sample_weight, variables):
            eager = tf.executing_eagerly()
            tape = tf.GradientTape() if eager else contextlib.nullcontext()
            with tape:
                y_pred = self(x, training=True)
                with tf.device(self.placed_nodes[-1].device):  # the loss where the logits are
                    loss = self._loss(x, y, y_pred, sample_weight)
            self.compute_metrics(x, y, y_pred, sample_weight)
            if eager:  # run_eagerly=True: the tape's gradient ops go where TensorFlow puts them
                return tape.gradient(loss, variables)
            # tf.gradients colocates each gradient op with its forward op, so stage i's backward pass
            # runs on device i; GradientTape does not (tensorflow/tensorflow#54460) and would put the
            # whole backward pass on the default device.
            return tf.gradients(loss, [tf_variable(v) for v in variables])

        def _loss(self, x, y, y_pred, sample_weight):
            return scaled_loss(self, keras3, x, y, y_pred, sample_weight)

    return PlacedModel


def scaled_loss(model, keras3: bool, x, y, y_pred, sample_weight):
    """The compiled loss of `model` on one (micro-)batch, scaled for mixed float16, with the loss metric updated."""
    if not keras3:  # tf_keras: compute_loss also updates the loss metric
        loss = model.compute_loss(x, y, y_pred, sample_weight)
        # tf_keras's LossScaleOptimizer scales only inside minimize(); this step differentiates itself.
        scale = getattr(model.optimizer, "get_scaled_loss", None)
        return scale(loss) if scale else loss
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    batch = tf.shape(tf.nest.flatten(x)[0])[0]
    next(m for m in model.metrics if m.name == "loss").update_state(loss, sample_weight=batch)
    return model.optimizer.scale_loss(loss)


def _pick(values: dict, ref: tuple[str, int | None]):
    name, index = ref
    return values[name] if index is None else tf.nest.flatten(values[name])[index]


def microbatch(data, k: int, m: int):
    """Micro-batch k of m: rows [k n, (k+1) n) of every tensor, n = batch / m (config checks m divides it)."""
    if m == 1:
        return data

    def rows(t):
        n = tf.shape(t)[0] // m
        return t[k * n : (k + 1) * n]

    return tf.nest.map_structure(lambda t: None if t is None else rows(t), data)


def add_gradients(total, grad, variable):
    if total is None or grad is None:
        return grad if total is None else total
    with tf.device(tf_variable(variable).device):  # accumulate where the variable lives
        return tf.convert_to_tensor(total) + tf.convert_to_tensor(grad)


# ================================================================ what plan and results.json show
def placement_summary(placed, layers: Sequence[LayerInfo], stages: Sequence[Stage], strategy_cfg) -> dict[str, Any]:
    """The stage table (device, layers, parameters, bytes, activation bytes sent on), with the
    parameter bytes of each stage counted from the variables that really are on its device."""
    p = strategy_cfg.placement
    table = stage_table(layers, stages, strategy_cfg.pipeline.microbatches, pipelined=p.kind != "branches")
    on_device = variable_bytes_by_device(placed.weights)
    for row in table["stages"]:
        row["parameter_bytes"] = on_device.get(row["device"], 0)
    table["balance"] = balance_ratio([row["parameter_bytes"] for row in table["stages"]])
    return {"kind": p.kind, **({"balance_by": p.balance} if p.kind == "auto" else {}), **table}


def variable_bytes_by_device(variables) -> dict[str, int]:
    """Bytes of the given variables per device (short names, /device:CPU:1), read from the variables themselves."""
    out: dict[str, int] = {}
    for v in variables:
        device = canonical_device(tf_variable(v).device)
        out[device] = out.get(device, 0) + _size(v) * tf.as_dtype(v.dtype).size
    return out


# ================================================================ where the traced training step runs
HEAVY_OPS = ("MatMul", "Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")


def training_step_ops(model, batch_spec, op_types: Sequence[str] = HEAVY_OPS) -> list[dict[str, str]]:
    """The ops of a Keras model's training step (a placed model's, typically), traced as model.fit traces it,
    whose type is in `op_types`.

    One dict per op: `op` (its name), `type`, `device` (short name, /device:CPU:1; '' if unplaced), `layer`
    (the layer whose name scope made it, forward or gradient; None if none) and `pass` (forward | backward).
    `batch_spec`: the (x, y) TensorSpecs of one batch, e.g. job.datasets.train.element_spec.
    """
    graph = tf.function(model.train_step).get_concrete_function(batch_spec).graph
    names = [node.name for node in getattr(model, "placed_nodes", ())] or [layer.name for layer in model.layers]
    return [
        {
            "op": op.name,
            "type": op.type,
            "device": canonical_device(op.device) if op.device else "",
            "layer": _layer_of_op(op.name, names),
            "pass": "backward" if op.name.split("/")[0].startswith(("gradients", "gradient_tape")) else "forward",
        }
        for op in graph.get_operations()
        if op.type in op_types
    ]


def _layer_of_op(op_name: str, layer_names: Sequence[str]) -> str | None:
    """The layer whose name scope an op was made in: 'conv_0' for 'gradients/conv_0_1/Conv2D_grad/...'."""
    found = [n for part in op_name.split("/") for n in layer_names if re.fullmatch(re.escape(n) + r"(_\d+)?", part)]
    return max(found, key=len) if found else None
