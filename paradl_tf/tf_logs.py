"""TensorFlow's own log output: kept out of the terminal by default, back with `paradl-tf --tf_logs`.

TensorFlow writes its C++ start-up lines (absl's "All log messages before absl::InitializeLog()",
the oneDNN notice, "Could not find cuda drivers", "failed call to cuInit") straight to file
descriptor 2 while it loads, before TF_CPP_MIN_LOG_LEVEL is read by the logger that would hide
them. So `start_tensorflow` points descriptor 2 at a file while TensorFlow loads and finds its
devices, shows again whatever is not such a line, and shows all of it if loading fails: a broken
install still explains itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from types import ModuleType

from paradl_tf.errors import ParadlError

# A C++ log line (I0000 00:00:1795979588.86 4011 port.cc:153] ...), absl's note before the first one,
# and LocalCluster's "=== task start ===" headers.
TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl|=== )")

# What TensorFlow says on every start without a problem to report: informational and warning lines, and
# the failed CUDA probe of a machine without a GPU driver. Errors and fatal lines of other origins stay.
_STARTUP_NOISE = re.compile(
    r"^([IW]\d{4} \d\d:\d\d:\d\d"
    r"|E\d{4} \d\d:\d\d:\d\d\S* +\d+ (cuda_platform|cuda_executor|cuda_diagnostics|cuda_dnn|cuda_fft|cuda_blas)\.cc:"
    r"|WARNING: All log messages before absl)"
)


def start_tensorflow(show_logs: bool = False) -> ModuleType:
    """Import TensorFlow and probe its devices; unless `show_logs`, without its C++ start-up lines and with
    Python log records below WARNING (absl's "Using MirroredStrategy with devices ...") left out."""
    if show_logs:
        import tensorflow as tf

        logging.getLogger().setLevel(logging.INFO)
        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines after start-up
    captured: list[str] = []
    try:
        with _stderr_into(captured):
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA's probe logs here, not at import
    except Exception as exc:
        sys.stderr.write("".join(captured))
        raise ParadlError(f"TensorFlow failed to start ({type(exc).__name__}: {exc}); its log is above") from None
    sys.stderr.write("".join(line for line in captured if not _STARTUP_NOISE.match(line)))
    quiet_python_logs()
    return tf


def quiet_python_logs() -> None:
    """Python log records of TensorFlow, absl and matplotlib below WARNING stay out of the terminal."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("tensorflow", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def descriptor_into(fd: int, target: int):
    """File descriptor `fd` (1 or 2) points where `target` does for a while: in this process, C++ code included,
    and in the processes it starts meanwhile."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    saved = os.dup(fd)
    os.dup2(target, fd)
    try:
        yield
    finally:
        stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


@contextlib.contextmanager
def _stderr_into(lines: list[str]):
    """File descriptor 2 (which C++ code writes to) goes to a temporary file; its lines end up in `lines`."""
    with tempfile.TemporaryFile() as tmp:
        try:
            with descriptor_into(2, tmp.fileno()):
                yield
        finally:
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines(keepends=True))


_TERMINAL_STDERR: int | None = None
"""While without_tensorflow_lines runs: the descriptor its pump writes to (the terminal's stderr)."""


def terminal_stderr() -> int:
    """The descriptor that reaches the terminal's stderr: not the filtering pipe, whose pump dies with this process.
    A child that may kill this process (a start-up watchdog) writes its last line here, or the line is lost."""
    return 2 if _TERMINAL_STDERR is None else _TERMINAL_STDERR


@contextlib.contextmanager
def without_tensorflow_lines():
    """File descriptor 2 through a pipe that drops TensorFlow's C++ log lines and passes everything else on, as
    it comes. TF_CPP_MIN_LOG_LEVEL=2 still shows C++ errors, and some are only echoes of the run's own one-line
    error: when one replica's input pipeline fails a check, MirroredStrategy's other replicas log "Aborting
    RingReduce with CANCELLED" on their way out."""
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump():
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not TF_LOG_LINE.match(line.decode(errors="replace")):
                    os.write(saved, line)

    global _TERMINAL_STDERR
    thread = threading.Thread(target=pump, name="stderr-without-tensorflow-lines", daemon=True)
    thread.start()
    _TERMINAL_STDERR = saved
    try:
        yield
    finally:
        _TERMINAL_STDERR = None
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the pump reads to its end and stops
        thread.join(timeout=5)
        os.close(saved)
