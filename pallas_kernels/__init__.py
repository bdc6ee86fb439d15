"""Linear-scan kernels for the RG-LRU: one API, several implementations.

`linear_scan(x, a, h0=None, *, reverse=False, impl="auto", interpret=False)`
computes `h_t = a_t * h_{t-1} + x_t` over axis 1 of `[B, T, D]` arrays and
returns `(y, h_last)`; `rg_lru(...)` computes the whole RG-LRU. Both pick
the implementation from the one dispatch table, `api.KERNELS`.

This package stays a top-level folder beside `recurrentgemma_jax/`, as the
design card lays it out, because it holds no model code and is built and
tested on its own: the model imports it, never the reverse.
"""

from pallas_kernels.api import IMPLS
from pallas_kernels.api import KERNELS
from pallas_kernels.api import linear_scan
from pallas_kernels.api import resolve_impl
from pallas_kernels.rg_lru import rg_lru
from pallas_kernels.rg_lru import rg_lru_reference
from pallas_kernels.sharded import scan_sharding

__all__ = [
    "IMPLS",
    "KERNELS",
    "linear_scan",
    "resolve_impl",
    "rg_lru",
    "rg_lru_reference",
    "scan_sharding",
]
