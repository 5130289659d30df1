"""The run config's schema: one pydantic model per YAML section, and the checks that span sections.

This module never imports TensorFlow, so a bad config fails in milliseconds, before the runtime starts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
ImportPath = Annotated[str, Field(pattern=r"^[\w.]+:\w+$")]


class Section(BaseModel):
    # Strict: "3" is not an int and yes/no are not strings; unknown keys are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


# ---------------------------------------------------------------- devices
class ThreadsConfig(Section):
    """TensorFlow's two CPU thread pools, set in every process of the run before TensorFlow starts (cluster
    tasks inherit them as TF_NUM_INTRAOP_THREADS/TF_NUM_INTEROP_THREADS). One process has one pool of each, shared
    by all its logical CPUs: devices.count: 4 with intra_op: 2 gives 4 devices that split 2 threads, not 8."""

    intra_op: PositiveInt | None = None
    """Threads inside one op (a matmul split over cores); default: TensorFlow's, one per core."""
    inter_op: PositiveInt | None = None
    """Independent ops run at once (replicas on logical devices, parallel branches); default: TensorFlow's."""

    def environment(self) -> dict[str, str]:
        """The variables TensorFlow reads for its pools when nothing sets them: what child processes inherit."""
        wanted = {"TF_NUM_INTRAOP_THREADS": self.intra_op, "TF_NUM_INTEROP_THREADS": self.inter_op}
        return {name: str(n) for name, n in wanted.items() if n is not None}


class DevicesConfig(Section):
    """Logical devices to create before TensorFlow starts."""

    type: Literal["CPU", "GPU"] = "CPU"
    """Device type to split into logical devices and to run on."""
    count: PositiveInt = 1
    """Logical devices per physical device (CPU: split the one CPU; GPU: split each GPU)."""
    memory_limit_mb: PositiveInt | None = None
    """GPU only: memory of each logical GPU; needed to split a GPU into more than one."""
    threads: ThreadsConfig = ThreadsConfig()
    """Intra-op and inter-op thread pools of every process; default: TensorFlow's."""


# ---------------------------------------------------------------- strategy
CrossDeviceOps = Literal["auto", "nccl", "hierarchical_copy", "reduction_to_one_device"]


class DefaultStrategyConfig(Section):
    """No distribution: TensorFlow's default strategy, placement left to TensorFlow."""

    kind: Literal["default"]


class OneDeviceStrategyConfig(Section):
    """Everything on one device (tf.distribute.OneDeviceStrategy)."""

    kind: Literal["one_device"]
    device: str | None = None
    """Device name such as /cpu:0 or /gpu:1; default: the first logical device of devices.type."""


class MirroredStrategyConfig(Section):
    """Synchronous data parallel on the devices of this process (tf.distribute.MirroredStrategy)."""

    kind: Literal["mirrored"]
    devices: PositiveInt | list[str] | None = None
    """How many logical devices (the first N), or their names; default: all of devices.type."""
    cross_device_ops: CrossDeviceOps = "auto"
    """All-reduce: auto (NCCL between GPUs, ring collectives on CPUs), nccl, hierarchical_copy, reduction_to_one_device."""


class StageConfig(Section):
    """One stage of an explicit placement: a device and the layers whose variables and computation it holds."""

    device: str
    """Device name such as /cpu:1 or /gpu:0."""
    layers: Annotated[list[Union[str, int]], Field(min_length=1)]
    """Layer names, indices (0 = the first layer after the input), or inclusive ranges 'first..last' of either.
    A layer named in no stage runs on the stage of the first layer it reads (so Flatten, Dropout need no entry)."""


class StagesPlacementConfig(Section):
    """Explicit stages, in the order the data flows through them."""

    kind: Literal["stages"]
    stages: Annotated[list[StageConfig], Field(min_length=1)]
    """The stages, in the order the data flows: each {device, layers}."""


class AutoPlacementConfig(Section):
    """Contiguous stages, one per device, balanced by parameter bytes or estimated FLOPs."""

    kind: Literal["auto"]
    devices: PositiveInt | list[str] | None = None
    """How many logical devices (the first N of devices.type), or their names; default: all of devices.type."""
    balance: Literal["params", "flops"] = "params"
    """What the contiguous stages balance: parameter bytes or estimated FLOPs."""


class BranchesPlacementConfig(Section):
    """Parallel paths (the branches of an inception block) on their own devices; the trunk on one device."""

    kind: Literal["branches"]
    devices: PositiveInt | list[str] | None = None
    """Branch j of every block goes on devices[j % N]: a count (the first N of devices.type) or names;
    default: all of devices.type."""
    trunk_device: str | None = None
    """Where the layers outside the branches run (stem, concatenations, head); default: the first device."""


PlacementConfig = Annotated[
    Union[StagesPlacementConfig, AutoPlacementConfig, BranchesPlacementConfig], Field(discriminator="kind")
]


class PipelineConfig(Section):
    """GPipe-style micro-batching: each global batch flows through the stages as M micro-batches."""

    microbatches: PositiveInt = 1
    """M; 1 means no pipelining. Gradients are summed over the micro-batches and applied once per batch."""


class ModelParallelStrategyConfig(Section):
    """Model parallel: layers, their variables and their computation pinned to devices with tf.device."""

    kind: Literal["model_parallel"]
    placement: PlacementConfig = AutoPlacementConfig(kind="auto")
    """How layers are assigned to devices: kind auto, stages or branches."""
    pipeline: PipelineConfig = PipelineConfig()
    """Micro-batching of each global batch through the stages."""


class HybridStrategyConfig(Section):
    """Model parallel inside data parallel: R replica groups, each a copy of the model split into S stages on its
    own S devices; each stage's gradients are all-reduced with the same stage of the other groups."""

    kind: Literal["hybrid"]
    replicas: PositiveInt | None = None
    """R, the replica groups; the global batch is split evenly over them. Default: len(groups), else 2."""
    groups: Annotated[list[Annotated[list[str], Field(min_length=1)]], Field(min_length=1)] | None = None
    """Each group's devices, stage k on its k-th device, e.g. [[/gpu:0, /gpu:1], [/gpu:2, /gpu:3]]; default:
    consecutive blocks of S logical devices of devices.type (group r: devices r*S to r*S+S-1)."""
    placement: PlacementConfig = AutoPlacementConfig(kind="auto")
    """How layers are cut into stages, as for model_parallel; it describes group 0 (placement.devices: a count,
    S; stages[k].device: group 0's device k) and every other group runs the same stages on its own devices."""
    pipeline: PipelineConfig = PipelineConfig()
    """Micro-batching of each group's share of the batch through its stages."""
    cross_device_ops: CrossDeviceOps = "auto"
    """How each stage's gradients are reduced across the groups: auto (NCCL between GPUs, reduction to one
    device on CPUs), nccl, hierarchical_copy, reduction_to_one_device."""

    @property
    def group_count(self) -> int:
        """R: replicas, else the number of groups listed, else 2."""
        return self.replicas or (len(self.groups) if self.groups else 2)


class NoPartitionerConfig(Section):
    """Every variable whole, on one ps; variables go round-robin over the ps tasks in creation order."""

    kind: Literal["none"]


class MinSizePartitionerConfig(Section):
    """tf.distribute.experimental.partitioners.MinSizePartitioner: as many shards as fit, each at least min_shard_bytes."""

    kind: Literal["min_size"]
    min_shard_bytes: PositiveInt = 256 << 10
    """Smallest shard, in bytes."""
    max_shards: PositiveInt | None = None
    """Default: the number of ps tasks."""


class MaxSizePartitionerConfig(Section):
    """tf.distribute.experimental.partitioners.MaxSizePartitioner: as few shards as keep each under max_shard_bytes."""

    kind: Literal["max_size"]
    max_shard_bytes: PositiveInt
    """Largest shard, in bytes."""
    max_shards: PositiveInt | None = None
    """Default: no limit."""


class FixedShardsPartitionerConfig(Section):
    """tf.distribute.experimental.partitioners.FixedShardsPartitioner: every variable split into `shards` along axis 0."""

    kind: Literal["fixed"]
    shards: PositiveInt
    """Shards per variable."""


VariablePartitionerConfig = Annotated[
    Union[NoPartitionerConfig, MinSizePartitionerConfig, MaxSizePartitionerConfig, FixedShardsPartitionerConfig],
    Field(discriminator="kind"),
]


class ParameterServerStrategyConfig(Section):
    """Asynchronous data parallel (tf.distribute.experimental.ParameterServerStrategy with a ClusterCoordinator):
    variables live on the ps tasks, the chief dispatches training steps to the workers. Tasks: the `cluster` section."""

    kind: Literal["parameter_server"]
    variable_partitioner: VariablePartitionerConfig = NoPartitionerConfig(kind="none")
    """How variables are split into shards over the ps tasks (axis 0): none, min_size, max_size, fixed."""
    steps_per_execution: PositiveInt | None = None
    """Training steps in each function the chief dispatches to a worker; default: train.steps_per_execution.
    More steps per dispatch cut RPC overhead; a worker lost mid-dispatch makes all of them run again elsewhere."""


class MultiWorkerMirroredStrategyConfig(Section):
    """Synchronous data parallel over processes and machines (tf.distribute.MultiWorkerMirroredStrategy): every
    worker runs the same training, gradients all-reduced over all workers each step. Tasks: the `cluster` section."""

    kind: Literal["multi_worker_mirrored"]
    communication: Literal["auto", "ring", "nccl"] = "auto"
    """Collective implementation: auto (TensorFlow picks), ring (gRPC ring all-reduce), nccl (GPUs only)."""
    collective_timeout_s: PositiveFloat | None = None
    """Fail a collective (an all-reduce) that takes longer than this with DeadlineExceededError, e.g. a worker
    that hangs without exiting (CommunicationOptions.timeout_seconds; costs a thread per collective). A worker
    that dies is noticed without it: by the local launcher, or TensorFlow's coordination-service heartbeat."""


StrategyConfig = Annotated[
    Union[DefaultStrategyConfig, OneDeviceStrategyConfig, MirroredStrategyConfig, ModelParallelStrategyConfig,
          ParameterServerStrategyConfig, MultiWorkerMirroredStrategyConfig, HybridStrategyConfig],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------- model
class MLPConfig(Section):
    """Flatten, then Dense layers, then a Dense classifier."""

    kind: Literal["mlp"]
    hidden: list[PositiveInt] = [128, 64]
    """Units of each hidden Dense layer."""
    activation: str = "relu"
    """Activation of the hidden layers (any Keras activation name)."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout rate after each hidden layer; 0 for none."""


class CNNConfig(Section):
    """Conv-ReLU-MaxPool blocks, then a Dense head."""

    kind: Literal["cnn"]
    filters: list[PositiveInt] = [32, 64]
    """Filters of each Conv-ReLU-MaxPool block."""
    kernel_size: PositiveInt = 3
    """Convolution kernel size."""
    dense: PositiveInt = 128
    """Units of the Dense layer before the classifier."""


class InceptionConfig(Section):
    """A stem conv, then inception blocks: four independent branches (1x1; 1x1-3x3; 1x1-5x5; pool-1x1) concatenated."""

    kind: Literal["inception"]
    stem_filters: PositiveInt = 32
    """Filters of the stem convolution."""
    blocks: PositiveInt = 2
    """Inception blocks."""
    branch_filters: PositiveInt = 16
    """Output filters of each branch (the 1x1 reductions have half)."""


class UserModelConfig(Section):
    """A user's model builder, `package.module:function(input_shape, num_classes, keras, **args)` returning a Keras model."""

    kind: Literal["user"]
    fn: ImportPath
    """The function, as package.module:function."""
    args: dict[str, Any] = {}
    """Keyword arguments passed to the function."""


ModelConfig = Annotated[
    Union[MLPConfig, CNNConfig, InceptionConfig, UserModelConfig], Field(discriminator="kind")
]


# ---------------------------------------------------------------- data
class DigitsConfig(Section):
    """scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes): real data, no download."""

    kind: Literal["digits"]
    validation_split: Fraction = 0.2
    """Fraction of examples held out for validation (stratified, seeded)."""


class SyntheticImagesConfig(Section):
    """Random images with learnable class structure, deterministic from train.seed."""

    kind: Literal["synthetic_images"]
    image_shape: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)] = [32, 32, 3]
    """Height, width, channels."""
    num_classes: Annotated[int, Field(ge=2)] = 10
    """Number of classes."""
    train_examples: PositiveInt = 2048
    """Training examples."""
    validation_examples: PositiveInt = 512
    """Validation examples."""


class SyntheticTabularConfig(Section):
    """Random feature vectors with learnable class structure, deterministic from train.seed."""

    kind: Literal["synthetic_tabular"]
    features: PositiveInt = 64
    """Features per example."""
    num_classes: Annotated[int, Field(ge=2)] = 10
    """Number of classes."""
    train_examples: PositiveInt = 4096
    """Training examples."""
    validation_examples: PositiveInt = 1024
    """Validation examples."""


class UserDataConfig(Section):
    """A user's loader, `package.module:function(seed, **args)` returning ((x_train, y_train), (x_val, y_val)) arrays."""

    kind: Literal["user"]
    fn: ImportPath
    """The function, as package.module:function."""
    args: dict[str, Any] = {}
    """Keyword arguments passed to the function."""


class DataServiceConfig(Section):
    """A tf.data service (dispatcher + data workers) that runs the input pipeline for the training processes."""

    kind: Literal["local", "address"]
    """local: the toolkit starts a dispatcher and `workers` data workers as processes, inside the run's private
    network, and stops them with it; address: a running service's dispatcher (grpc://host:port)."""
    address: str | None = None
    """address: the dispatcher, e.g. grpc://dispatcher:5050."""
    workers: PositiveInt = 2
    """local: tf.data workers to start."""


class FileDataConfig(Section):
    """What every file source shares: streamed from files (never loaded whole), split between input pipelines."""

    validation_fraction: Fraction | None = None
    """Hold out this fraction of the training files (the last ones, sorted by name) for validation, where no
    validation files are given."""
    shard_policy: Literal["auto", "file", "data"] = "auto"
    """How input pipelines (workers, or replicas under Mirrored) split the training data. file: each reads only
    its own files; data: each reads every file and keeps every N-th example; auto: file where there are at least
    as many files as pipelines, else data (with a warning)."""
    shuffle_buffer: PositiveInt = 10_000
    """Examples shuffled together after the interleaved reads (file order is shuffled too, every pass)."""
    cycle_length: PositiveInt = 4
    """Files read at once, interleaved record by record."""
    service: DataServiceConfig | None = None
    """Run the input pipeline on a tf.data service instead of in each training process; default: in-process."""


class TFRecordDataConfig(FileDataConfig):
    """TFRecord shards of tf.train.Example records (`paradl-tf data write` makes them from any in-memory source).
    The feature spec comes from a metadata.json beside the shards, or from the keys below."""

    kind: Literal["tfrecord"]
    train_files: str
    """Training shards: a file pattern on any TensorFlow filesystem (local, gs://, hdfs://)."""
    validation_files: str | None = None
    """Validation shards: a file pattern; or validation_fraction."""
    metadata: str | None = None
    """The metadata file (feature shape, classes, examples per file); default: metadata.json beside the first
    training file, if there is one."""
    feature_shape: list[PositiveInt] | None = None
    """Shape of one example's features (float32), where no metadata file says it."""
    num_classes: Annotated[int, Field(ge=2)] | None = None
    """Number of classes, where no metadata file says it."""
    feature_key: str = "x"
    """The tf.train.Example feature holding the features (a float list)."""
    label_key: str = "y"
    """The tf.train.Example feature holding the class id (an int64)."""


class ImageFolderDataConfig(FileDataConfig):
    """One sub-folder per class of PNG or JPEG files (the layout keras.utils.image_dataset_from_directory reads);
    classes are the sub-folders' names, sorted. Pixels are scaled to [0, 1]."""

    kind: Literal["image_folder"]
    train_dir: str
    """The training images: <train_dir>/<class>/<image>.png|jpg."""
    validation_dir: str | None = None
    """The validation images, same classes; or validation_fraction."""
    image_size: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]
    """Height and width every image is resized to."""
    channels: Literal[1, 3] = 3
    """1: grayscale, 3: RGB."""


class CSVDataConfig(FileDataConfig):
    """CSV files with a header row: one column of class ids, every other column a float feature."""

    kind: Literal["csv"]
    train_files: str
    """Training files: a file pattern on any TensorFlow filesystem."""
    validation_files: str | None = None
    """Validation files: a file pattern; or validation_fraction."""
    label_column: str = "label"
    """The column of integer class ids."""
    ignore_columns: list[str] = ["id"]
    """Columns that are neither features nor the label (e.g. an example id)."""
    feature_shape: list[PositiveInt] | None = None
    """Reshape each row's features to this (e.g. [8, 8, 1]); default: a vector, or what metadata.json says."""
    num_classes: Annotated[int, Field(ge=2)] | None = None
    """Number of classes, where no metadata file says it."""
    metadata: str | None = None
    """The metadata file (feature shape, classes, examples per file); default: metadata.json beside the first
    training file, if there is one."""


class UserDatasetConfig(Section):
    """A user's tf.data pipeline: `package.module:function(input_context, seed, split, **args)` returning a
    tf.data.Dataset of (features, class id) examples, unbatched. `input_context` (a tf.distribute.InputContext, or
    None in one process) says which share this pipeline reads; split is 'train' (repeated by the toolkit) or
    'validation' (one pass). Needs train.steps_per_epoch."""

    kind: Literal["user_dataset"]
    fn: ImportPath
    """The function, as package.module:function."""
    args: dict[str, Any] = {}
    """Keyword arguments passed to the function."""
    num_classes: Annotated[int, Field(ge=2)]
    """Number of classes."""
    shuffle_buffer: PositiveInt = 10_000
    """Training examples shuffled together (seeded)."""


DataConfig = Annotated[
    Union[DigitsConfig, SyntheticImagesConfig, SyntheticTabularConfig, UserDataConfig, TFRecordDataConfig,
          ImageFolderDataConfig, CSVDataConfig, UserDatasetConfig],
    Field(discriminator="kind"),
]
FILE_KINDS = ("tfrecord", "image_folder", "csv", "user_dataset")
"""Data kinds streamed from files or a user's pipeline, not held in memory."""


# ---------------------------------------------------------------- train
class TrainConfig(Section):
    """How model.fit runs. Batch sizes are global: each replica gets global_batch_size / replicas."""

    epochs: PositiveInt = 5
    """Passes of model.fit (epochs of steps_per_epoch steps)."""
    steps_per_epoch: PositiveInt | None = None
    """Default: one pass over the training data."""
    global_batch_size: PositiveInt = 64
    """Examples per training step, over all replicas."""
    optimizer: Literal["sgd", "adam", "rmsprop", "adagrad"] = "adam"
    """Keras optimizer."""
    learning_rate: PositiveFloat = 1e-3
    """Optimizer learning rate."""
    seed: int = 0
    """Seeds Python, NumPy, TensorFlow, the data split, synthetic data and shuffling."""
    steps_per_execution: PositiveInt = 1
    """Training steps per tf.function call; >1 cuts per-step Python overhead."""
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"] = "float32"
    """Keras mixed-precision policy: variables stay float32, layers compute in bfloat16 or float16 (with loss
    scaling); logits and loss stay float32. auto: bfloat16 on CPUs and GPUs that have it, float16 on older GPUs,
    float32 otherwise (plan and results.json say which ran and why)."""
    deterministic: bool = False
    """tf.config.experimental.enable_op_determinism(): bitwise-repeatable runs, slower."""
    tensorboard: bool = False
    """Write TensorBoard logs to <output_dir>/tensorboard."""
    verbose: Literal[0, 1, 2] = 1
    """Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch."""


# ---------------------------------------------------------------- cluster
class HostLinkConfig(Section):
    """One emulated host's link and CPU (cluster.hosts.per_host), overriding cluster.hosts' defaults."""

    bandwidth_mbit: PositiveFloat | None = None
    """This host's link bandwidth in Mbit/s, each direction (tc tbf); default: cluster.hosts.bandwidth_mbit."""
    cpu_share: PositiveFloat | None = None
    """This host's CPU quota in cores, e.g. 0.5 (a cgroup's cpu.cfs_quota_us); default: cluster.hosts.cpu_share."""


class HostsConfig(Section):
    """A local cluster on emulated hosts: each host a network namespace on a private bridge, with its own address,
    hostname, working directory, and optionally a link bandwidth and a CPU share; each runs what a real host runs
    (`paradl-tf train` or `serve` with its own TF_CONFIG). Needs root. See docs/deployment.md, Rehearsing."""

    groups: list[Annotated[list[str], Field(min_length=1)]] | None = None
    """Tasks per host, e.g. [[chief:0, ps:0], [worker:0], [worker:1]] (every task once); default: one host per task.
    Hosts are named n1, n2, ... in this order (default order: chief, workers, ps)."""
    subnet: str = "10.231.0.0/24"
    """The bridge's IPv4 subnet; hosts take its addresses in order (n1 the first). Private to the run."""
    bandwidth_mbit: PositiveFloat | None = None
    """Every link's bandwidth in Mbit/s, each direction (tc tbf); default: unshaped."""
    cpu_share: PositiveFloat | None = None
    """Every host's CPU quota in cores (cgroup cpu.cfs_quota_us, or cpu.max); default: no limit."""
    per_host: dict[str, HostLinkConfig] = {}
    """Host name -> its own bandwidth_mbit or cpu_share, e.g. {n2: {bandwidth_mbit: 5}} for one slow link."""
    absent: list[str] = []
    """Hosts that are made but never start their tasks: rehearses a machine that does not come up."""
    kernel_refuses: Literal["fail", "skip"] = "fail"
    """When the kernel refuses a bandwidth (tbf) or a CPU share (cgroup): fail with one line naming the piece,
    or go on without it, saying so in one line (and in results.json)."""


class ClusterConfig(Section):
    """The tasks of a multi-process strategy (parameter_server) and how to start or find them."""

    resolver: Literal["local", "tf_config", "slurm", "kubernetes", "jobset", "indexed_job"] = "local"
    """local: the toolkit starts the cluster on this machine (127.0.0.1); tf_config: TF_CONFIG from the
    environment (one process per host, tasks run `paradl-tf serve`); slurm, kubernetes: TensorFlow's resolvers;
    jobset, indexed_job: TF_CONFIG built inside a pod of `paradl-tf export --format=jobset|indexed-job` from its
    role, index and stable hostname (no Kubernetes API access)."""
    mode: Literal["process", "in_process"] = "process"
    """local only: process = each task its own OS process; in_process = servers in this process (notebooks, tests)."""
    workers: PositiveInt = 2
    """local, slurm, kubernetes, jobset, indexed_job: worker tasks (tf_config: TF_CONFIG says)."""
    ps: Annotated[int, Field(ge=0)] = 1
    """local, slurm, kubernetes, jobset: parameter-server tasks (tf_config: TF_CONFIG says)."""
    start_timeout_s: PositiveFloat = 60.0
    """How long to wait for every task to accept connections before failing with the name of the one that did not."""
    timeout_s: PositiveFloat | None = None
    """local, process mode: stop the whole run, every process included, after this many seconds; default: no limit."""
    private_network: Literal["auto", "required", "off"] = "auto"
    """local: run the cluster in a private network namespace with only loopback (unshare). auto falls back to
    the host network with a loud warning where that is impossible, required fails instead, off never isolates."""
    restart_workers: Annotated[int, Field(ge=0)] = 3
    """local, process mode: restart a worker process that dies, at most this many times per worker (0: never).
    Exported JobSet / Indexed Job: the restarts their failure policies allow (see the README, Kubernetes)."""
    port: PositiveInt = 8888
    """The port every task serves on: kubernetes, jobset, indexed_job, and the containerPort of exported manifests
    (TFJob included: its operator writes it into TF_CONFIG); tf-config --hosts without a port; slurm: the first
    port on each node (port_base)."""
    kubernetes_labels: dict[str, str] = {}
    """kubernetes: job name -> pod label selector, e.g. {worker: 'job-name=worker', ps: 'job-name=ps'}."""
    kubernetes_name: Annotated[str, Field(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63)] = "paradl-tf"
    """metadata.name of the exported TFJob, JobSet or Indexed Job (and its headless Service); jobset and
    indexed_job task hostnames derive from it (a DNS-1035 label: lowercase letters, digits, '-')."""
    hosts: HostsConfig | None = None
    """local, process mode: run the cluster on emulated hosts (cluster.hosts.*) instead of loopback; default: off."""


# ---------------------------------------------------------------- checkpoint
class BackupAndRestoreConfig(Section):
    """Keras BackupAndRestore: training state backed up so that a preempted run resumes where it was."""

    save_freq: Literal["epoch"] | PositiveInt = "epoch"
    """'epoch': at every epoch end; an integer N: every N training steps (resumes mid-epoch)."""


class CheckpointConfig(Section):
    """Where training state is backed up so that a rerun resumes (Keras BackupAndRestore)."""

    dir: str | None = None
    """Back up model and optimizer (every backup_and_restore.save_freq); a rerun of the same config resumes from
    the last backup. Removed once a run finishes. Default: no backups."""
    backup_and_restore: BackupAndRestoreConfig = BackupAndRestoreConfig()
    """How often Keras BackupAndRestore backs up into `dir` (steps: multi_worker_mirrored only; Keras 3 resumes
    at epoch starts)."""
    keep: Annotated[int, Field(ge=0)] = 0
    """multi_worker_mirrored: keep the last N checkpoints of model and optimizer in <output_dir>/checkpoints, one
    every backup_and_restore.save_freq, named ckpt-<step> (tf.train.CheckpointManager); they stay after the run
    (the chief's only). 0: none."""
    export: bool = False
    """Write the trained model to <output_dir>/model.keras (multi_worker_mirrored: the chief only; the other
    workers write theirs to temporary directories, as TensorFlow requires, and delete them). Not parameter_server."""


KerasChoice = Literal["auto", "keras3", "tf_keras"]


class Config(Section):
    """One training run."""

    devices: DevicesConfig = DevicesConfig()
    strategy: StrategyConfig = DefaultStrategyConfig(kind="default")
    """How the work is spread over devices; the kind picks the tf.distribute strategy (or model parallel)."""
    keras: KerasChoice = "auto"
    """Which Keras runs: auto picks Keras 3 where the strategy supports it, tf_keras (Keras 2) where not."""
    model: ModelConfig = MLPConfig(kind="mlp")
    """The Keras model; the kind picks the builder."""
    data: DataConfig = DigitsConfig(kind="digits")
    """The training and validation data; the kind picks the loader."""
    train: TrainConfig = TrainConfig()
    cluster: ClusterConfig = ClusterConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    output_dir: str = "runs/default"
    """Where config.yaml, results.json (and TensorBoard logs, cluster logs) are written."""

    _source: str | None = PrivateAttr(default=None)
    _provenance: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str | None:
        """The YAML file this config came from, if any."""
        return self._source

    @property
    def provenance(self) -> dict[str, str]:
        """Dotted key -> 'default' | 'file' | '--set'."""
        return dict(self._provenance)

    @property
    def launches_local_cluster(self) -> bool:
        """True when training starts local task processes (a launcher that waits for them, TensorFlow-free)."""
        c = self.cluster
        if self.strategy.kind == "multi_worker_mirrored":
            return c.resolver == "local"
        if self.strategy.kind == "parameter_server":
            return c.resolver == "local" and c.mode == "process"
        # One process with its own tf.data service: the run and the service's servers go into the private
        # network together, so the unauthenticated servers are out of reach of other machines.
        service = getattr(self.data, "service", None)
        return service is not None and service.kind == "local"

    @model_validator(mode="after")
    def _check_combinations(self) -> "Config":
        for check in _COMBINATION_CHECKS:
            check(self)
        return self


def _check_memory_limit(cfg: Config) -> None:
    if cfg.devices.memory_limit_mb is not None and cfg.devices.type == "CPU":
        raise ValueError(
            "devices.memory_limit_mb applies to GPUs only; remove it or set devices.type: GPU. "
            f"Received: devices.memory_limit_mb={cfg.devices.memory_limit_mb}"
        )


def _check_nccl(cfg: Config) -> None:
    s = cfg.strategy
    if getattr(s, "cross_device_ops", None) == "nccl" and cfg.devices.type == "CPU":
        raise ValueError(
            "strategy.cross_device_ops: NCCL all-reduce needs GPUs, but devices.type is CPU; "
            "use auto or reduction_to_one_device. Received: strategy.cross_device_ops='nccl'"
        )


def _check_mirrored_device_count(cfg: Config) -> None:
    s = cfg.strategy
    if s.kind == "mirrored" and isinstance(s.devices, int) and cfg.devices.type == "CPU":
        if s.devices > cfg.devices.count:
            raise ValueError(
                f"strategy.devices asks for {s.devices} devices but only {cfg.devices.count} logical "
                f"CPU(s) exist (devices.count). Received: strategy.devices={s.devices}"
            )


def _check_microbatches(cfg: Config) -> None:
    s = cfg.strategy
    if s.kind == "model_parallel" and cfg.train.global_batch_size % s.pipeline.microbatches:
        raise ValueError(
            f"strategy.pipeline.microbatches must divide train.global_batch_size={cfg.train.global_batch_size} "
            f"into equal micro-batches. Received: strategy.pipeline.microbatches={s.pipeline.microbatches}"
        )


def _check_placement_devices(cfg: Config) -> None:
    """Model-parallel devices that cannot exist (CPUs beyond devices.count) or are listed twice."""
    s = cfg.strategy
    if s.kind != "model_parallel":
        return
    p = s.placement
    cpus = cfg.devices.count if cfg.devices.type == "CPU" else 1
    if p.kind == "stages":
        named = [(f"strategy.placement.stages[{i}].device", stage.device) for i, stage in enumerate(p.stages)]
    elif p.devices is None:
        named = []
    elif isinstance(p.devices, int):
        if cfg.devices.type == "CPU" and p.devices > cpus:
            raise ValueError(
                f"strategy.placement.devices asks for {p.devices} devices but only {cpus} logical CPU(s) exist "
                f"(devices.count). Received: strategy.placement.devices={p.devices}"
            )
        named = []
    else:
        named = [(f"strategy.placement.devices[{i}]", d) for i, d in enumerate(p.devices)]
    seen: dict[tuple, str] = {}
    for key, name in named:
        _check_cpu_exists(key, name, cpus)
        ident = _device_id(name)
        if ident in seen:
            raise ValueError(
                f"{key}: device {name!r} is already used by {seen[ident]}; give each device one stage. "
                f"Received: {key}={name!r}"
            )
        seen[ident] = key
    if p.kind == "branches" and p.trunk_device:
        _check_cpu_exists("strategy.placement.trunk_device", p.trunk_device, cpus)


def _check_cpu_exists(key: str, name: str, cpus: int) -> None:
    kind, index = _device_id(name)
    if kind == "CPU" and index is not None and index >= cpus:
        raise ValueError(
            f"{key}: device {name!r} does not exist; devices.count makes {cpus} logical CPU(s), "
            f"/device:CPU:0 to /device:CPU:{cpus - 1}. Received: {key}={name!r}"
        )


def _device_id(name: str) -> tuple[str, int | None]:
    """('CPU', 1) for '/cpu:1', '/device:CPU:1' or '/job:localhost/replica:0/task:0/device:CPU:1'."""
    last = name.strip().lower().rsplit("/", 1)[-1].removeprefix("device:")
    kind, _, index = last.partition(":")
    return kind.upper(), int(index) if index.isdigit() else None


def _check_hybrid(cfg: Config) -> None:
    """Hybrid: R groups x S stages that fit the devices, groups of one size, a batch that splits into R x M."""
    s = cfg.strategy
    if s.kind != "hybrid":
        return
    r, p, m = s.group_count, s.placement, s.pipeline.microbatches
    if s.groups is not None:
        if len(s.groups) != r:
            raise ValueError(f"strategy.groups lists {len(s.groups)} group(s) but strategy.replicas is {r}; "
                             f"give one device list per replica group. Received: strategy.replicas={r}")
        sizes = [len(g) for g in s.groups]
        if len(set(sizes)) > 1:
            raise ValueError(f"strategy.groups: groups of unequal size {sizes}; every group runs the same stages, "
                             f"one per device. Received: strategy.groups={s.groups!r}")
        ids = [_device_id(d) for g in s.groups for d in g]
        if len(set(ids)) < len(ids):
            raise ValueError(f"strategy.groups: a device is listed twice; each device holds one stage of one group. "
                             f"Received: strategy.groups={s.groups!r}")
        for i, g in enumerate(s.groups):
            for k, d in enumerate(g):
                _check_cpu_exists(f"strategy.groups[{i}][{k}]", d, cfg.devices.count if cfg.devices.type == "CPU" else 1)
    if p.kind != "stages" and isinstance(p.devices, list):
        raise ValueError("strategy.placement.devices: with strategy.kind: hybrid give a count (stages per group); "
                         f"name the devices in strategy.groups. Received: strategy.placement.devices={p.devices!r}")
    stages = len(p.stages) if p.kind == "stages" else (len(s.groups[0]) if s.groups else p.devices)
    if s.groups and stages != len(s.groups[0]) and p.kind == "stages":
        raise ValueError(f"strategy.placement.stages lists {stages} stages but each of strategy.groups has "
                         f"{len(s.groups[0])} devices; give one stage per device of a group. "
                         f"Received: strategy.placement.stages={stages} stages")
    if p.kind != "stages" and s.groups and p.devices not in (None, len(s.groups[0])):
        raise ValueError(f"strategy.placement.devices is {p.devices} stages per group but each of strategy.groups "
                         f"has {len(s.groups[0])} devices. Received: strategy.placement.devices={p.devices}")
    if cfg.devices.type == "CPU" and stages and not s.groups and r * stages > cfg.devices.count:
        raise ValueError(f"strategy.replicas: {r} groups x {stages} stages need {r * stages} devices but "
                         f"devices.count makes {cfg.devices.count} logical CPU(s). Received: strategy.replicas={r}")
    if p.kind == "stages":
        group0 = [_device_id(d) for d in s.groups[0]] if s.groups else [("CPU", k) for k in range(stages)]
        for k, stage in enumerate(p.stages):
            if cfg.devices.type == "CPU" or s.groups:
                if _device_id(stage.device) != group0[k]:
                    want = s.groups[0][k] if s.groups else f"/device:CPU:{k}"
                    raise ValueError(
                        f"strategy.placement.stages[{k}].device: {stage.device!r} is not group 0's device {k} ({want}); "
                        "every group runs the same stage list, stage k on its own k-th device (strategy.groups). "
                        f"Received: strategy.placement.stages[{k}].device={stage.device!r}")
    if cfg.train.global_batch_size % (r * m):
        raise ValueError(f"train.global_batch_size must split into strategy.replicas={r} groups x "
                         f"strategy.pipeline.microbatches={m} equal micro-batches. "
                         f"Received: train.global_batch_size={cfg.train.global_batch_size}")


def _check_parameter_server(cfg: Config) -> None:
    if cfg.strategy.kind != "parameter_server":
        return
    if cfg.train.steps_per_epoch is None:
        raise ValueError(
            "train.steps_per_epoch is required with strategy.kind: parameter_server: every worker reads an "
            "endlessly repeated dataset, so an epoch is a number of steps. Received: train.steps_per_epoch=None"
        )
    if cfg.cluster.resolver != "tf_config" and cfg.cluster.ps < 1:
        raise ValueError(
            "cluster.ps must be at least 1 with strategy.kind: parameter_server: the variables live on the ps "
            f"tasks. Received: cluster.ps={cfg.cluster.ps}"
        )
    if cfg.cluster.resolver == "indexed_job":
        raise ValueError(
            "cluster.resolver: indexed_job runs synchronous training only (one Indexed Job of workers); parameter "
            "servers need a chief that ends the run and a ps whose loss fails it: use jobset. "
            "Received: cluster.resolver='indexed_job'"
        )


def _check_multi_worker(cfg: Config) -> None:
    s = cfg.strategy
    if s.kind != "multi_worker_mirrored":
        ck = cfg.checkpoint
        # Single-process runs back up with Keras 3's BackupAndRestore, which resumes at epoch starts only.
        for key, value, default in (("checkpoint.keep", ck.keep, 0),
                                    ("checkpoint.backup_and_restore.save_freq", ck.backup_and_restore.save_freq, "epoch")):
            if value != default:
                raise ValueError(f"{key} applies to strategy.kind: multi_worker_mirrored only; remove it. "
                                 f"Received: {key}={value!r}")
        if ck.export and s.kind == "parameter_server":
            raise ValueError("checkpoint.export does not apply to strategy.kind: parameter_server (the chief holds "
                             "no copy of the model; save it from the coordinator yourself); remove it. "
                             "Received: checkpoint.export=True")
        return
    if s.communication == "nccl" and cfg.devices.type == "CPU":
        raise ValueError(
            "strategy.communication: NCCL collectives need GPUs, but devices.type is CPU; use auto or ring. "
            "Received: strategy.communication='nccl'"
        )
    if cfg.cluster.resolver == "local" and cfg.cluster.mode != "process":
        raise ValueError(
            "cluster.mode: in_process is not possible with multi_worker_mirrored: every worker runs the whole "
            "training program in its own process. Received: cluster.mode='in_process'"
        )


def _check_loss_scaling(cfg: Config) -> None:
    # tf_keras's LossScaleOptimizer refuses strategies whose variables are not one copy per replica
    # (loss_scale_optimizer.strategy_supports_loss_scaling): ParameterServerStrategy among them.
    if cfg.train.precision == "mixed_float16" and cfg.strategy.kind == "parameter_server":
        raise ValueError("train.precision: mixed_float16 needs loss scaling, which Keras does not support under "
                         "ParameterServerStrategy; use mixed_bfloat16 (no loss scaling) or float32. "
                         "Received: train.precision='mixed_float16'")
    # tf_keras wraps a mixed-precision layer's variables in AutoCastVariables, which take a tf.Variable only: the
    # ShardedVariable a partitioner makes fails there (tf_keras/src/mixed_precision/autocast_variable.py).
    if (cfg.train.precision.startswith("mixed_") and cfg.strategy.kind == "parameter_server"
            and cfg.strategy.variable_partitioner.kind != "none"):
        raise ValueError(f"train.precision: {cfg.train.precision} cannot be combined with strategy.variable_partitioner "
                         f"({cfg.strategy.variable_partitioner.kind}): Keras's mixed precision cannot wrap sharded "
                         f"variables; use float32 or no partitioner. Received: train.precision='{cfg.train.precision}'")


def _check_file_data(cfg: Config) -> None:
    d = cfg.data
    if d.kind == "user_dataset" and cfg.train.steps_per_epoch is None:
        raise ValueError("train.steps_per_epoch is required with data.kind: user_dataset: the toolkit cannot count a "
                         "user's pipeline's examples. Received: train.steps_per_epoch=None")
    if d.kind not in ("tfrecord", "image_folder", "csv"):
        return
    given = d.validation_dir if d.kind == "image_folder" else d.validation_files
    key = "data.validation_dir" if d.kind == "image_folder" else "data.validation_files"
    if (given is None) == (d.validation_fraction is None):
        raise ValueError(f"data: give exactly one of {key} and data.validation_fraction. "
                         f"Received: {key}={given!r}, data.validation_fraction={d.validation_fraction!r}")
    service = d.service
    if service is not None and (service.kind == "address") != (service.address is not None):
        raise ValueError("data.service.address is needed with data.service.kind: address, and only then. "
                         f"Received: data.service.kind={service.kind!r}, data.service.address={service.address!r}")


def _check_keras_for_strategy(cfg: Config) -> None:
    """An explicit keras: keras3 with a strategy Keras 3 cannot run fails here, before anything starts."""
    from paradl_tf.builders.keras_version import KERAS3_UNSUPPORTED

    why = KERAS3_UNSUPPORTED.get(cfg.strategy.kind)
    if cfg.keras == "keras3" and why:
        raise ValueError(f"keras: keras3 cannot run this: {why}; use keras: auto or tf_keras. Received: keras='keras3'")


def _check_hosts(cfg: Config) -> None:
    c = cfg.cluster
    if c.hosts is None:
        return
    where = f"strategy.kind={cfg.strategy.kind}, cluster.resolver={c.resolver}, cluster.mode={c.mode}"
    if cfg.strategy.kind not in ("multi_worker_mirrored", "parameter_server") or c.resolver != "local" \
            or c.mode != "process":
        raise ValueError("cluster.hosts: emulated hosts run a local process cluster of multi_worker_mirrored or "
                         f"parameter_server (cluster.resolver: local, cluster.mode: process). Received: {where}")
    service = getattr(cfg.data, "service", None)
    if service is not None and service.kind == "local":
        raise ValueError("cluster.hosts: a local tf.data service (data.service.kind: local) does not run on emulated "
                         "hosts; give data.service.kind: address, or leave cluster.hosts out")


_COMBINATION_CHECKS = [
    _check_memory_limit, _check_nccl, _check_mirrored_device_count, _check_microbatches, _check_placement_devices,
    _check_parameter_server, _check_multi_worker, _check_loss_scaling, _check_keras_for_strategy, _check_hybrid,
    _check_file_data, _check_hosts,
]
