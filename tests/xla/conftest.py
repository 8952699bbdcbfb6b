"""Start CPU PJRT's XLA runtime at collection, when torch_xla is installed (tests/xla skips without it).

torch's autograd engine sizes its per-device queues at the first backward of the process; a
backward on the CPU before the XLA runtime exists leaves no queue for ``xla:0`` (an internal
assert at the first XLA backward), so the runtime starts before any test runs. Not on an
accelerator: the multi-process tests spawn processes that need the device free.
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("torch_xla") is not None and os.environ.setdefault("PJRT_DEVICE", "CPU").upper() == "CPU":
    import torch_xla

    torch_xla.device()
