"""NPUGraph, streams, events and task update on CUDA graphs or on the host (see runtime/device.py).

Public names and argument orders are torch_npu's (``torch.npu.*``). Switches:
- ``set_backend("host" | "cuda")``: the backend, chosen from the npu device by default (``cuda`` when
  present, else ``host``); objects belong to the backend they were made on.
- ``set_external_event_semantics("consuming" | "reset")``: ExternalEvents made from then on wait as in
  torch_npu 26.x (default) or as in 7.x (see runtime/events.py).
- ``backend().wait_timeout_s`` (default 10 s): how long a host synchronisation waits for another thread
  to issue the record that releases parked work before it raises ``DeadlockError`` (at once when no
  other thread is alive), and on CUDA how long a device-side ExternalEvent wait spins before it gives
  up and the next synchronize raises.
"""

from . import tasks as _tasks
from .auto_dispatch import NpuGraphOpHandler, register_npu_graph_handler
from .backends import available_backends, backend, set_backend
from .device import npu_device
from .errors import DeadlockError, FlagMergeError
from .events import ExternalEvent, set_external_event_semantics
from .graphs import (NPUGraph, graph, graph_pool_handle, is_current_stream_capturing,
                     make_graphed_callables)
from .opkinds import register_task_namespace
from .streams import Event, Stream, current_stream, default_stream, set_stream, stream, synchronize
from .tasks import (TaskGroupHandle, graph_task_group_begin, graph_task_group_end, graph_task_update_begin,
                    graph_task_update_end)

_tasks.install()

from . import torchair  # noqa: E402  (registers the air:: operators)

__all__ = [
    "DeadlockError", "Event", "ExternalEvent", "FlagMergeError", "NPUGraph", "NpuGraphOpHandler", "Stream",
    "TaskGroupHandle",
    "available_backends", "backend", "current_stream", "default_stream", "graph", "graph_pool_handle",
    "graph_task_group_begin", "graph_task_group_end", "graph_task_update_begin", "graph_task_update_end",
    "is_current_stream_capturing", "make_graphed_callables", "npu_device", "register_npu_graph_handler",
    "register_task_namespace", "set_backend", "set_external_event_semantics", "set_stream", "stream",
    "synchronize", "torchair",
]
