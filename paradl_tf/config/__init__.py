"""The run config: typed sections (`schema`), loading with `--set` overrides (`loading`), the reference table
(`reference`). Never imports TensorFlow, so a bad config fails in milliseconds."""

from paradl_tf.config.loading import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_CONFIG_NODES, dump_config, load_config
from paradl_tf.config.schema import (
    AutoPlacementConfig, BackupAndRestoreConfig, BranchesPlacementConfig, CheckpointConfig, ClusterConfig, CNNConfig, CSVDataConfig,
    DataServiceConfig, FILE_KINDS, FileDataConfig, ImageFolderDataConfig, TFRecordDataConfig, UserDatasetConfig,
    Config, DataConfig, DefaultStrategyConfig, DevicesConfig, DigitsConfig, FixedShardsPartitionerConfig,
    HybridStrategyConfig, InceptionConfig, MaxSizePartitionerConfig, MinSizePartitionerConfig, MirroredStrategyConfig, MLPConfig,
    ModelConfig, ModelParallelStrategyConfig, MultiWorkerMirroredStrategyConfig, NoPartitionerConfig,
    OneDeviceStrategyConfig, ParameterServerStrategyConfig, PipelineConfig, PlacementConfig, Section, StageConfig,
    StagesPlacementConfig, StrategyConfig, SyntheticImagesConfig, SyntheticTabularConfig, ThreadsConfig,
    TrainConfig, UserDataConfig, UserModelConfig, VariablePartitionerConfig,
)

__all__ = [
    "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "MAX_CONFIG_NODES", "dump_config", "load_config",
    "AutoPlacementConfig", "BackupAndRestoreConfig", "BranchesPlacementConfig", "CheckpointConfig", "ClusterConfig",
    "CNNConfig", "Config", "DataConfig", "DefaultStrategyConfig", "DevicesConfig", "DigitsConfig",
    "FixedShardsPartitionerConfig", "HybridStrategyConfig", "InceptionConfig", "MaxSizePartitionerConfig", "MinSizePartitionerConfig",
    "MirroredStrategyConfig", "MLPConfig", "ModelConfig", "ModelParallelStrategyConfig",
    "MultiWorkerMirroredStrategyConfig", "NoPartitionerConfig", "OneDeviceStrategyConfig",
    "ParameterServerStrategyConfig", "PipelineConfig", "PlacementConfig", "Section", "StageConfig",
    "StagesPlacementConfig", "StrategyConfig", "SyntheticImagesConfig", "SyntheticTabularConfig", "ThreadsConfig",
    "TrainConfig", "UserDataConfig", "UserModelConfig", "VariablePartitionerConfig", "CSVDataConfig",
    "DataServiceConfig", "FILE_KINDS", "FileDataConfig", "ImageFolderDataConfig", "TFRecordDataConfig",
    "UserDatasetConfig",
]
