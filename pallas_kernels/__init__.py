"""Linear-scan kernels for the RG-LRU: one API, several implementations.

`linear_scan(x, a, h0=None, *, reverse=False, impl="auto", interpret=False)`
computes `h_t = a_t * h_{t-1} + x_t` over axis 1 of `[B, T, D]` arrays and
returns `(y, h_last)`.
"""

from pallas_kernels.api import IMPLS
from pallas_kernels.api import available_impls
from pallas_kernels.api import linear_scan
from pallas_kernels.api import register_impl
from pallas_kernels.api import resolve_impl

__all__ = [
    "IMPLS",
    "available_impls",
    "linear_scan",
    "register_impl",
    "resolve_impl",
]

from pallas_kernels.rg_lru import rg_lru  # noqa: E402
from pallas_kernels.rg_lru import rg_lru_reference  # noqa: E402

__all__ += ["rg_lru", "rg_lru_reference"]

from pallas_kernels.sharded import scan_sharding  # noqa: E402

__all__ += ["scan_sharding"]

# Kernel modules register themselves with `register_impl` on import.
# (Each one imports only what its backend needs, so all import on CPU.)
from pallas_kernels import gpu_rg_lru, gpu_scan  # noqa: E402,F401
from pallas_kernels import tpu_rg_lru, tpu_scan  # noqa: E402,F401
