"""Every annotation in the project resolves at run time.

`typing.get_type_hints` (used by dataclass tools, typeguard, jaxtyping's
runtime checks and documentation generators) must resolve the annotations
of every class, method and function defined in `recurrentgemma_jax` and
`pallas_kernels`: shape aliases are real module-level objects, not names
defined only under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import pallas_kernels
import recurrentgemma_jax

# Annotations that name what this module may not import at run time.
KNOWN = {
    # `MLPBlock`: nn/mlp.py imports nn/quantized.py, and import circles are
    # forbidden (tests/test_import_graph.py).
    "recurrentgemma_jax.nn.quantized.quantize_mlp",
    # Fields inherited from tfds.core.BuilderConfig, annotated in tfds's
    # own module with names that module imports only for type checking.
    "recurrentgemma_jax.data.local_text.LocalTextConfig",
}


def _annotated_objects():
  for package in (recurrentgemma_jax, pallas_kernels):
    for info in pkgutil.walk_packages(package.__path__,
                                      package.__name__ + "."):
      module = importlib.import_module(info.name)
      for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
          continue
        if inspect.isfunction(obj):
          yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj):
          yield f"{module.__name__}.{name}", obj
          for attr, member in vars(obj).items():
            if inspect.isfunction(member):
              yield f"{module.__name__}.{name}.{attr}", member


def test_every_annotation_resolves():
  failures, checked = {}, 0
  for qualified, obj in _annotated_objects():
    checked += 1
    try:
      typing.get_type_hints(obj)
    except Exception as e:  # pylint: disable=broad-except
      failures[qualified] = repr(e)[:200]
  assert checked > 1000  # the walk reached the whole project
  assert set(failures) == KNOWN, {k: v for k, v in failures.items()
                                  if k not in KNOWN}


def test_the_shape_aliases_are_jaxtyping_types():
  from recurrentgemma_jax import model  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.sampling import sampler  # pylint: disable=g-import-not-at-top

  hints = typing.get_type_hints(model.Griffin.__call__)
  assert hints["return"] is not None
  assert "B T" in str(model.Ids) and "B T V" in str(model.Logits)
  assert "B T" in str(sampler.IdRows)
