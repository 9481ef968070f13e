"""Process-level machinery of the long-running server and agent: how their long-lived
tasks are started, named, guarded and stopped (`tasks`), and how the process's memory
is tuned (`memory`). Below every package that does I/O: no etcd, no HTTP here."""

from federation.runtime.memory import release_memory, tune_gc
from federation.runtime.tasks import Tasks, forever

__all__ = ["Tasks", "forever", "release_memory", "tune_gc"]
