"""Hybrid parallelism: model parallel inside data parallel, R replica groups x S stages, in one process.

    paradl-tf train --config=configs/hybrid.yaml      # 2 groups x 2 stages over 4 logical CPUs
    paradl-tf plan --config=configs/hybrid.yaml       # the mesh: per group its devices, stages, bytes

How: the model from the config is placed R times (paradl_tf.model_parallel.placed.place_model), group r's
stage k on group r's k-th device, every copy starting from the reference's weights. One training step
splits the global batch into R equal parts, one per group; each group runs its part through its stages
(as M micro-batches with pipeline.microbatches) and differentiates with tf.gradients, so each stage's
gradients sit on that stage's device. For each variable, the R groups' gradients are averaged with a
tf.distribute CrossDeviceOps (NCCL or hierarchical copy between GPUs, reduction to one device on CPUs),
whose result has one copy on each group's device; one optimizer applies that same update to every copy, so
the copies never drift. Only stage k's gradients travel between the groups' stage-k devices.
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Sequence

import tensorflow as tf
# PerReplica is the value type tf.distribute's CrossDeviceOps reduce; no public constructor exists
# outside a strategy's replica context, and the groups here are not a strategy's replicas.
from tensorflow.python.distribute.values import PerReplica

from paradl_tf.builders.devices import existing_device, select_devices
from paradl_tf.builders.models import compile_model
from paradl_tf.builders.strategies import hybrid_cross_device_ops
from paradl_tf.errors import ConfigError
from paradl_tf.model_parallel.placed import (
    add_gradients, build_optimizer_on_stage_devices, describe_layers, microbatch, model_class_for, place_model,
    plan_stages, scaled_loss, sent_dtypes, tf_variable, variable_bytes_by_device,
)
from paradl_tf.model_parallel.placement import LayerInfo, Stage, balance_ratio, stage_table

KEY = "strategy"


# ================================================================ from config to a compiled hybrid model
def compile_hybrid_model(model, cfg, keras: ModuleType):
    """The compiled hybrid model that `cfg.strategy` (kind hybrid) describes, and its mesh table."""
    s = cfg.strategy
    layers = describe_layers(model)
    groups = plan_groups(s, cfg.devices, layers)
    copies = [place_model(model, stages, keras, s.pipeline.microbatches, name=f"{model.name}_group{r}")
              for r, stages in enumerate(groups)]
    reduction = hybrid_cross_device_ops(s.cross_device_ops, cfg.devices.type)
    hybrid = _hybrid_model_class(keras)(copies, reduction, s.pipeline.microbatches, name=f"{model.name}_hybrid")
    hybrid.build_from_copies([tf.zeros([len(groups)] + [d or 1 for d in t.shape[1:]], t.dtype) for t in model.inputs])
    # XLA ignores tf.device (tensorflow/tensorflow#124880), as for model_parallel.
    compile_model(hybrid, cfg.train, keras, jit_compile=False)
    build_optimizer_on_stage_devices(hybrid)
    mesh = mesh_summary(hybrid, layers, groups, s, type(reduction).__name__)
    mesh["activation_dtypes"] = sent_dtypes(model, layers, groups[0])  # as model_parallel's: bfloat16 halves them
    return hybrid, mesh


def group_devices(strategy_cfg, devices_cfg) -> list[list[str]]:
    """Each group's devices (existing logical devices, full names), stage k on its k-th device."""
    s, p = strategy_cfg, strategy_cfg.placement
    r = s.group_count
    if s.groups:
        return [[existing_device(d, f"{KEY}.groups[{i}][{k}]") for k, d in enumerate(g)] for i, g in enumerate(s.groups)]
    available = select_devices(None, devices_cfg.type, f"{KEY}.groups")
    per_group = len(p.stages) if p.kind == "stages" else (p.devices or len(available) // r)
    if per_group < 1 or r * per_group > len(available):
        raise ConfigError(
            f"{KEY}.replicas: {r} groups x {per_group} stages need {r * per_group} devices but "
            f"{len(available)} {devices_cfg.type} device(s) exist. Received: {KEY}.replicas={r}"
        )
    return [available[i * per_group : (i + 1) * per_group] for i in range(r)]


def plan_groups(strategy_cfg, devices_cfg, layers: Sequence[LayerInfo]) -> list[list[Stage]]:
    """Every group's stages: group 0's as model_parallel would place them on group 0's devices, and the same
    layers on the other groups' devices (stage k of group r on group r's k-th device)."""
    groups = group_devices(strategy_cfg, devices_cfg)
    p = strategy_cfg.placement
    first = groups[0]
    if p.kind == "stages":
        for k, stage in enumerate(p.stages):
            device = existing_device(stage.device, f"{KEY}.placement.stages[{k}].device")
            if k >= len(first) or device != first[k]:
                raise ConfigError(
                    f"{KEY}.placement.stages[{k}].device: {stage.device!r} is not group 0's device {k}; every group "
                    f"runs the same stage list, stage k on its own k-th device ({KEY}.groups). "
                    f"Received: {KEY}.placement.stages[{k}].device={stage.device!r}"
                )
    elif p.kind == "branches" and p.trunk_device and existing_device(p.trunk_device, f"{KEY}.placement.trunk_device") not in first:
        raise ConfigError(f"{KEY}.placement.trunk_device: {p.trunk_device!r} is not a device of group 0; the trunk "
                          f"runs in every group. Received: {KEY}.placement.trunk_device={p.trunk_device!r}")
    # Group 0 is placed exactly as model_parallel places it, over group 0's devices only.
    placement0 = p if p.kind == "stages" else p.model_copy(update={"devices": first})
    stages0 = plan_stages(strategy_cfg.model_copy(update={"placement": placement0}), devices_cfg, layers)
    index = {device: k for k, device in enumerate(first)}
    plan = [[Stage(g[index[stage.device]], stage.layers) for stage in stages0] for g in groups]
    for r, stages in enumerate(plan):
        if [st.layers for st in stages] != [st.layers for st in stages0]:  # a guard: the mapping keeps the layers
            raise ConfigError(f"{KEY}.groups[{r}]: its stage list differs from group 0's; every group runs the same "
                              f"stages. Received: {KEY}.groups[{r}]={groups[r]!r}")
    return plan


# ================================================================ the Keras model
def _hybrid_model_class(keras: ModuleType) -> type:
    return model_class_for(keras, _define_hybrid_model)


def _define_hybrid_model(keras: ModuleType, keras3: bool) -> type:
    class HybridModel(keras.Model):
        """R placed copies of one model; a step trains each on its share of the batch with the averaged gradients."""

        def __init__(self, copies, cross_device_ops, microbatches=1, **kwargs):
            super().__init__(**kwargs)
            self.copies = list(copies)
            self.cross_device_ops = cross_device_ops
            self.microbatches = microbatches

        def call(self, inputs, training=None):
            # Evaluation and predict: data parallel over the groups too (any batch size: parts may differ by one row).
            parts = [_rows(inputs, r, len(self.copies)) for r in range(len(self.copies))]
            outputs = [copy(part, training=training) for copy, part in zip(self.copies, parts)]
            return tf.nest.map_structure(lambda *o: tf.concat(o, axis=0), *outputs)

        def build_from_copies(self, example_inputs) -> None:
            self(example_inputs if len(example_inputs) > 1 else example_inputs[0], training=False)

        def train_step(self, data):
            groups = len(self.copies)
            per_group = []
            for r, copy in enumerate(self.copies):
                part = tf.nest.map_structure(lambda t: None if t is None else _rows(t, r, groups), data)
                per_group.append(self._group_gradients(copy, part))
            grads = self._all_reduce(per_group)
            pairs = [(g, v) for copy, gs in zip(self.copies, grads) for g, v in zip(gs, copy.trainable_variables)
                     if g is not None]
            self.optimizer.apply_gradients(pairs)
            return self.get_metrics_result()

        def _group_gradients(self, copy, data):
            """One group's gradients of the mean loss over its part of the batch (micro-batches summed, averaged)."""
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            variables = copy.trainable_variables
            total = None
            for k in range(self.microbatches):
                mx, my, msw = microbatch((x, y, sample_weight), k, self.microbatches)
                eager = tf.executing_eagerly()
                tape = tf.GradientTape() if eager else contextlib.nullcontext()
                with tape:
                    y_pred = copy(mx, training=True)
                    with tf.device(copy.placed_nodes[-1].device):
                        loss = scaled_loss(self, keras3, mx, my, y_pred, msw)
                self.compute_metrics(mx, my, y_pred, msw)
                # tf.gradients keeps each stage's backward pass on its device (tensorflow/tensorflow#54460).
                grads = tape.gradient(loss, variables) if eager else tf.gradients(loss, [tf_variable(v) for v in variables])
                total = grads if total is None else [add_gradients(a, b, v) for a, b, v in zip(total, grads, variables)]
            if self.microbatches > 1:
                total = [None if g is None else g / self.microbatches for g in total]
            if not keras3 and hasattr(self.optimizer, "get_unscaled_gradients"):  # tf_keras mixed_float16
                total = [None if g is None else self.optimizer.get_unscaled_gradients([g])[0] for g in total]
            return total

        def _all_reduce(self, per_group):
            """Per group, per variable: the mean over the groups of that variable's gradient, on the group's device."""
            if len(self.copies) == 1:
                return per_group
            indices = [i for i, g in enumerate(per_group[0]) if g is not None]
            pairs = []
            for i in indices:
                values = PerReplica([tf.convert_to_tensor(gs[i]) for gs in per_group])
                # Destinations: each copy's variable, so copy r's share of the result lands on its device.
                pairs.append((values, PerReplica([tf_variable(c.trainable_variables[i]) for c in self.copies])))
            reduced = self.cross_device_ops.batch_reduce(tf.distribute.ReduceOp.MEAN, pairs) if pairs else []
            out = [[None] * len(per_group[0]) for _ in self.copies]
            for i, mirrored in zip(indices, reduced):
                for r, value in enumerate(mirrored.values):
                    out[r][i] = value
            return out

    return HybridModel


def _rows(t, part: int, parts: int):
    """Rows [part n / parts, (part + 1) n / parts) of a batch; equal parts when parts divides n."""
    def take(x):
        n = tf.shape(x)[0]
        return x[part * n // parts : (part + 1) * n // parts]

    return tf.nest.map_structure(take, t)


# ================================================================ what plan and results.json show
def mesh_summary(hybrid, layers: Sequence[LayerInfo], groups: Sequence[Sequence[Stage]], strategy_cfg,
                 reduction: str) -> dict[str, Any]:
    """The mesh: per group its devices; per group and stage the layers, the parameter bytes read from the variables
    on its device, and the gradient bytes all-reduced per step with the same stage of the other groups."""
    p = strategy_cfg.placement
    table = stage_table(layers, groups[0], strategy_cfg.pipeline.microbatches, pipelined=p.kind != "branches")
    on_device = variable_bytes_by_device(hybrid.weights)
    trainable = variable_bytes_by_device(hybrid.trainable_weights)
    rows = []
    for r, stages in enumerate(groups):
        for row, stage in zip(table["stages"], stages):
            rows.append({**row, "group": r, "device": stage.device, "parameter_bytes": on_device.get(stage.device, 0),
                         "all_reduce_bytes_per_step": trainable.get(stage.device, 0) if len(groups) > 1 else 0})
    per_group = [row["parameter_bytes"] for row in rows if row["group"] == 0]
    return {
        "kind": p.kind, **({"balance_by": p.balance} if p.kind == "auto" else {}),
        "replicas": len(groups),
        "groups": [{"group": r, "devices": [st.device for st in stages]} for r, stages in enumerate(groups)],
        "stages": rows,
        "balance": balance_ratio(per_group),
        "microbatches": table["microbatches"],
        "idle_fraction": table["idle_fraction"],
        "cross_device_ops": reduction,
        "all_reduce_bytes_per_step": sum(r["all_reduce_bytes_per_step"] for r in rows if r["group"] == 0),
        # What MirroredStrategy over R x S devices would all-reduce per replica per step: the whole model's gradients.
        "mirrored_all_reduce_bytes_per_step": sum(trainable.get(d, 0) for d in (st.device for st in groups[0])),
    }
