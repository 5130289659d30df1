"""The methods the benchmark measures: the toolkit's `strategy` section of each, and its hand-written sides."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One way to train: the toolkit's `strategy` section, the devices it needs, its hand-written reference."""

    name: str
    title: str
    group: str
    """baseline, sync (synchronous data parallel), async (parameter servers), model (model parallel), pipeline."""
    strategy: dict
    devices: int = 1
    """Logical devices (CPU) or GPUs this method needs in one process."""
    reference: str | None = None
    """Key of paradl_tf.benchmark.reference.REFERENCES; None: no hand-written reference yet (ratio n/a)."""
    tutorial: str | None = None
    """Key of paradl_tf.benchmark.reference.TUTORIALS: TensorFlow's tutorial-style code for this method, measured
    as a third side (ratio toolkit_over_tutorial); None: none."""
    workloads: tuple[str, ...] = ("mlp", "cnn")
    cluster: dict | None = None
    curve: tuple[str, int] | None = None
    """(curve name, x): a point of a curve plotted against x, e.g. ("pipeline", microbatches)."""
    todo: str | None = None
    """Set while the toolkit lacks this method: the bench reports it as not available, with this reason."""
    train: dict | None = None
    """Overrides of the `train` section, e.g. {"steps_per_execution": 16}."""


def _mirrored(n: int) -> Method:
    return Method(f"mirrored_{n}", f"MirroredStrategy, {n} device(s)", "sync", {"kind": "mirrored", "devices": n},
                  devices=n, reference="mirrored")


def _model_parallel(n: int) -> Method:
    return Method(f"model_parallel_{n}", f"model parallel, {n} stages (auto, params)", "model",
                  {"kind": "model_parallel", "placement": {"kind": "auto", "devices": n}}, devices=n,
                  reference="model_parallel", curve=("pipeline", 1) if n == 2 else None)


def _pipeline(m: int) -> Method:
    return Method(f"pipeline_{m}", f"pipeline, 2 stages, {m} micro-batches", "pipeline",
                  {"kind": "model_parallel", "placement": {"kind": "auto", "devices": 2},
                   "pipeline": {"microbatches": m}}, devices=2, reference="model_parallel", workloads=("cnn",),
                  curve=("pipeline", m))


METHODS: list[Method] = [
    Method("no_strategy", "one device, no strategy", "baseline", {"kind": "default"}, reference="one_device",
           workloads=("mlp", "cnn", "inception")),
    _mirrored(1), _mirrored(2), _mirrored(4),
    # The MLP's steps are so short that dispatching each one costs as much as running it: several steps per
    # tf.function call remove that cost (tf_keras with 2+ replicas: Keras 3 crashes, keras-team/keras#19246).
    Method("no_strategy_spe16", "one device, no strategy, 16 steps per execution", "baseline",
           {"kind": "default"}, reference="one_device", workloads=("mlp",), train={"steps_per_execution": 16}),
    Method("mirrored_4_spe16", "MirroredStrategy, 4 device(s), 16 steps per execution", "sync",
           {"kind": "mirrored", "devices": 4}, devices=4, reference="mirrored", workloads=("mlp",),
           train={"steps_per_execution": 16}),
    Method("multi_worker_mirrored_2", "MultiWorkerMirroredStrategy, 2 local processes", "sync",
           {"kind": "multi_worker_mirrored"}, reference="multi_worker_mirrored", tutorial="multi_worker_mirrored",
           cluster={"resolver": "local", "mode": "process", "workers": 2, "private_network": "auto"}),
    Method("parameter_server", "parameter servers: 2 workers, 1 ps (local processes)", "async",
           {"kind": "parameter_server"}, reference="parameter_server", tutorial="parameter_server",
           cluster={"resolver": "local", "mode": "process", "workers": 2, "ps": 1, "private_network": "auto"}),
    _model_parallel(2), _model_parallel(4),
    _pipeline(2), _pipeline(4), _pipeline(8),
    Method("branches_4", "model parallel, inception branches on 4 devices", "model",
           {"kind": "model_parallel", "placement": {"kind": "branches", "devices": 4}}, devices=4,
           reference="model_parallel", workloads=("inception",)),
    # Model parallel inside data parallel, beside mirrored_4 and model_parallel_4 on the same 4 devices.
    Method("hybrid_2x2", "hybrid, 2 replica groups x 2 stages", "model",
           {"kind": "hybrid", "replicas": 2, "placement": {"kind": "auto", "devices": 2}}, devices=4,
           reference="hybrid"),
]
METHOD_BY_NAME = {m.name: m for m in METHODS}
BASELINE = "no_strategy"
