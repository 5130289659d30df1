"""Checkpoints: the resume point of a backup, the checkpoints kept, the exported model.

Under MultiWorkerMirroredStrategy every worker must save (saving may read distributed values), but only the
chief's files are kept; the others write to temporary directories and delete them, as TensorFlow requires.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from paradl_tf.errors import ConfigError

# The optimizer's step count in a tf_keras BackupAndRestore checkpoint (new optimizers; legacy ones: `iter`).
BACKUP_ITERATIONS_KEYS = ("model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
                          "model/optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE")


def backed_up_steps(backup_dir: str | None) -> int:
    """Training steps already done by the run whose backup is in `backup_dir` (0: none)."""
    if not backup_dir:
        return 0
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if latest is None:
        return 0
    names = {name for name, _ in tf.train.list_variables(latest)}
    key = next((k for k in BACKUP_ITERATIONS_KEYS if k in names), None)
    if key is None:
        raise ConfigError(f"checkpoint.dir holds a backup without the optimizer's step count; remove it or use "
                          f"another checkpoint.dir. Received: checkpoint.dir={backup_dir!r}")
    return int(tf.train.load_variable(latest, key))


def keras3_backed_up_epochs(backup_dir: str | None) -> int:
    """Epochs done by the run whose Keras 3 BackupAndRestore backup is in `backup_dir` (0: none). Keras 3
    resumes at the start of the epoch after the last backup, so single-process backups are per epoch."""
    if not backup_dir:
        return 0
    metadata = Path(backup_dir) / "training_metadata.json"
    if not metadata.exists():
        return 0
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"checkpoint.dir holds an unreadable Keras backup ({metadata}); remove it or use another "
                          f"checkpoint.dir. Received: checkpoint.dir={backup_dir!r}") from None


def export_model(model, path: Path, is_chief: bool, enabled: bool) -> None:
    """Every worker saves (saving may read distributed values); only the chief's copy is kept, at `path` (Keras
    format, one .keras file); the others write to a temporary directory and delete it."""
    if not enabled:
        return
    if is_chief:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(path))
        return
    scratch = tempfile.mkdtemp(prefix="paradl-export-")
    try:
        model.save(os.path.join(scratch, path.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def checkpoint_keeper(keras, directory: Path, keep: int, save_freq: str | int, is_chief: bool):
    """A callback that keeps the last `keep` checkpoints of model and optimizer in `directory`.

    tf.train.CheckpointManager numbers each by the optimizer's step (ckpt-<step>) and deletes the older
    ones; saved at every epoch end or every `save_freq` steps. Unlike the BackupAndRestore backup, they
    stay after the run: restore one with tf.train.Checkpoint(model=..., optimizer=...).restore(path).
    """
    import tensorflow as tf

    class KeepCheckpoints(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._scratch = None if is_chief else tempfile.mkdtemp(prefix="paradl-checkpoints-")
            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
            self.manager = tf.train.CheckpointManager(checkpoint, str(directory) if is_chief else self._scratch,
                                                      max_to_keep=keep if is_chief else 1)

        def on_train_batch_end(self, batch, logs=None):
            # The optimizer's step, not a count of this run's batches: a resumed run saves at the same steps.
            if save_freq != "epoch" and int(self.model.optimizer.iterations.numpy()) % save_freq == 0:
                self._save()

        def on_epoch_end(self, epoch, logs=None):
            if save_freq == "epoch":
                self._save()

        def on_train_end(self, logs=None):
            if self._scratch:
                shutil.rmtree(self._scratch, ignore_errors=True)

        def _save(self):
            self.manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))

    return KeepCheckpoints()
