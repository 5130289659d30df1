"""Errors the toolkit raises for bad input (the CLI prints them as `error: ...` and exits 2), and its warnings
(the CLI prints them as one `warning: ...` line)."""


class ParadlError(Exception):
    """Bad input or an environment that cannot run what was asked; the message is one line with the fix."""


class ConfigError(ParadlError, ValueError):
    """A config file, key or value is wrong."""


class DeviceSetupError(ParadlError, RuntimeError):
    """Logical devices cannot be created as asked."""


class ClusterError(ParadlError, RuntimeError):
    """A cluster could not start, lost a task it cannot do without, or ran out of time."""


class TrainingDiverged(ParadlError, RuntimeError):
    """The training loss became NaN or infinite: the run stopped at that step, its last backup kept."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        super().__init__(message)
        self.epoch, self.step = epoch, step


ONE_LINE = {cls.__name__: cls for cls in (ConfigError, DeviceSetupError, ClusterError, TrainingDiverged)}
"""Errors a process of a local cluster reports through its status file, by class name: the process that reads
the status raises the same class, so the user sees the one line once, from whoever reports it."""


class ParadlWarning(UserWarning):
    """Something the user should know that does not stop the run (a Python warning, filterable as such)."""
