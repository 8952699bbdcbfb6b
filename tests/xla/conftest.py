"""Start the XLA runtime at collection, when torch_xla is installed (tests/xla's modules skip without it).

torch's autograd engine sizes its per-device queues at the first backward of the process; a
backward on the CPU before the XLA runtime exists leaves no queue for ``xla:0`` (an internal
assert at the first XLA backward), so the runtime starts before any test runs.
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("torch_xla") is not None:
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    import torch_xla

    torch_xla.device()
