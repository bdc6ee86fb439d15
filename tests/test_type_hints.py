"""Every annotation in the project resolves at run time.

`typing.get_type_hints` (used by dataclass tools, typeguard, jaxtyping's
runtime checks and documentation generators) must resolve the annotations
of every class, method (static, class and property ones included) and
function defined in `recurrentgemma_jax` and `pallas_kernels`, the
packages' own `__init__` too: shape aliases are real module-level objects,
not names defined only under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import jaxtyping

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
    # `loop.TrainResult`: the training loop (orbax, tfds, grain) is imported
    # when `rg.train` is called, so that `import recurrentgemma_jax` stays
    # light.
    "recurrentgemma_jax.train",
}


def _modules():
  for package in (recurrentgemma_jax, pallas_kernels):
    yield package
    for info in pkgutil.walk_packages(package.__path__,
                                      package.__name__ + "."):
      yield importlib.import_module(info.name)


def _functions_of(cls):
  for attr, member in vars(cls).items():
    if isinstance(member, (staticmethod, classmethod)):
      member = member.__func__
    elif isinstance(member, property):
      member = member.fget
    if inspect.isfunction(member):
      yield attr, member


def _annotated_objects():
  for module in _modules():
    for name, obj in vars(module).items():
      if getattr(obj, "__module__", None) != module.__name__:
        continue
      if inspect.isfunction(obj):
        yield f"{module.__name__}.{name}", obj
      elif inspect.isclass(obj):
        yield f"{module.__name__}.{name}", obj
        for attr, member in _functions_of(obj):
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
  # Importing every submodule left the package's functions in place (a
  # submodule named `train` would have replaced `rg.train`).
  for name in ("train", "evaluate"):
    assert inspect.isfunction(getattr(recurrentgemma_jax, name)), name


def test_the_shape_aliases_are_jaxtyping_array_types():
  from recurrentgemma_jax import model  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.sampling import decode  # pylint: disable=g-import-not-at-top

  assert issubclass(model.Logits, jaxtyping.AbstractArray)
  assert model.Logits.dim_str == "B T V"
  assert issubclass(decode.Generated, jaxtyping.AbstractArray)
  assert decode.Generated.dim_str == "B N"
  hints = typing.get_type_hints(model.Griffin.__call__)
  assert hints["return"] == model.Logits | tuple[model.Logits,
                                                  model.GriffinCache]
