"""What edgediff says, and what it keeps of the libraries' output.

edgediff's own lines go to stderr (stdout carries tables and --json). The libraries' output
is held back unless -v: their Python prints and warnings, and what native code writes to
file descriptors 1 and 2 (TensorFlow's C++ log, LiteRT's "INFO: Created TensorFlow Lite
XNNPACK delegate for CPU."). With --log FILE all of it, edgediff's lines included, is kept
in FILE; a step that fails shows the tail of what it held back, so its error keeps its
context. The settings travel in the environment, so that --int8's candidate processes
follow them.
"""

import contextlib
import io
import os
import sys
import tempfile
import warnings

VERBOSE_ENV = "EDGEDIFF_VERBOSE"  # "1": the libraries' output as they give it (-v)
LOG_ENV = "EDGEDIFF_LOG"  # a file that keeps everything (--log)
_QUIET_ENV = {  # the libraries' own switches, for output that cannot be caught in Python
    "LITERT_TORCH_SHOW_PROGRESS": "n",  # litert-torch's stage log
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's and LiteRT's C++ log
}
_WARNINGS = (FutureWarning, DeprecationWarning, UserWarning)  # torch, litert-torch, onnxscript


def verbose() -> bool:
  return os.environ.get(VERBOSE_ENV) == "1"


def setup(is_verbose: bool, log_path: str | None = None) -> None:
  """For this process and the ones it starts: -v, or quiet (kept in `log_path` if given)."""
  if is_verbose:
    os.environ[VERBOSE_ENV] = "1"
  if log_path:
    log_path = os.path.abspath(log_path)
    with open(log_path, "w"):  # a new log per command; its children append
      pass
    os.environ[LOG_ENV] = log_path
  apply()


def apply() -> None:
  """Puts the environment's settings in force in this process (a spawned child too)."""
  if verbose():
    return
  if not os.environ.get(LOG_ENV):  # with a log, the libraries say all they have
    for key, value in _QUIET_ENV.items():
      os.environ.setdefault(key, value)
    os.environ.setdefault("PYTHONWARNINGS", ",".join(f"ignore::{k.__name__}" for k in _WARNINGS))
    for kind in _WARNINGS:
      warnings.simplefilter("ignore", kind)
    return

  def to_log(message, category, filename, lineno, file=None, line=None):
    _keep(warnings.formatwarning(message, category, filename, lineno, line))

  warnings.showwarning = to_log


def _keep(text: str) -> None:
  path = os.environ.get(LOG_ENV)
  if path and text:
    with open(path, "a", encoding="utf-8") as f:
      f.write(text if text.endswith("\n") else text + "\n")


def log(message: str) -> None:
  """One of edgediff's own lines."""
  print(message, file=sys.stderr, flush=True)
  _keep(message)


@contextlib.contextmanager
def libraries_quiet():
  """Holds back everything written inside, from Python or native code, unless -v; keeps it
  in the log; shows its tail on stderr when the block raises."""
  if verbose():
    yield
    return
  held = io.StringIO()
  sys.stdout.flush()
  sys.stderr.flush()
  with tempfile.TemporaryFile() as native:
    saved = os.dup(1), os.dup(2)
    os.dup2(native.fileno(), 1)
    os.dup2(native.fileno(), 2)
    failed = False
    try:
      with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
        yield
    except BaseException:
      failed = True
      raise
    finally:
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      for fd in saved:
        os.close(fd)
      native.seek(0)
      text = native.read().decode("utf-8", "replace") + held.getvalue()
      _keep(text)
      if failed:
        sys.stderr.write(text[-4000:])
