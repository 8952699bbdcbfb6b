"""Precision plugins: fp32 (+tf32) base, mixed fp16/bf16, true half, apex; and their registry.

``PRECISIONS.get(name, **kwargs)`` builds one by name: ``fp32``, ``fp16-mixed``, ``bf16-mixed``,
``fp16-true``, ``bf16-true``, ``apex`` (needs NVIDIA apex). Users register their own.
"""

from trainkit.precision.amp import MixedPrecision
from trainkit.precision.apex import APEX_INSTALL, ApexPrecision
from trainkit.precision.base import Precision
from trainkit.precision.flags import GlobalFlags
from trainkit.precision.half import HalfPrecision, module_cast_to
from trainkit.registry import Registry

__all__ = [
    "PRECISIONS",
    "ApexPrecision",
    "GlobalFlags",
    "HalfPrecision",
    "MixedPrecision",
    "Precision",
    "module_cast_to",
]

PRECISIONS: Registry[Precision] = Registry("precision", base=Precision)
PRECISIONS.register("fp32", Precision, description="float32 (tf32=True allows TF32 matmuls on CUDA)")
PRECISIONS.register("fp16-mixed", MixedPrecision, precision="fp16", description="autocast fp16 + GradScaler")
PRECISIONS.register("bf16-mixed", MixedPrecision, precision="bf16", description="autocast bf16")
PRECISIONS.register("fp16-true", HalfPrecision, precision="fp16", description="parameters and inputs in fp16")
PRECISIONS.register("bf16-true", HalfPrecision, precision="bf16", description="parameters and inputs in bf16")
PRECISIONS.register("apex", ApexPrecision, requires="apex", install=APEX_INSTALL, description="NVIDIA apex AMP O0-O3")
