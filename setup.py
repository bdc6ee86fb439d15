"""pip packaging for recurrentgemma_jax (`pip install -e .[test]`)."""

import importlib.util
import pathlib
import re

import setuptools

ROOT = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"',
    (ROOT / "recurrentgemma_jax" / "__init__.py").read_text(),
).group(1)


def _cli():
  """recurrentgemma_jax/cli/__init__.py, loaded by path: it imports only the
  standard library, the package itself needs jax."""
  path = ROOT / "recurrentgemma_jax" / "cli" / "__init__.py"
  spec = importlib.util.spec_from_file_location("_recurrentgemma_cli", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

# Ranges include the GPU machine's versions (jax 0.11.2, flax 0.12.10,
# orbax-checkpoint 0.12.4) and the newest releases; CI pins exact versions in
# requirements/ci-constraints.txt.
INSTALL_REQUIRES = [
    "jax>=0.11.2,<0.13",
    "flax>=0.12.10,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.4,<0.13",
    "chex>=0.1.90",
    "numpy>=1.26",
    "absl-py>=2.1",
    "ml_collections>=1.0",
    "grain>=0.2.12",
    "tensorflow-datasets>=4.9.9",
    "array_record>=0.8.1",
    "etils[epath]>=1.7",
    "sentencepiece>=0.2.0",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    # Shape annotations of the public array boundaries (annotations only).
    "jaxtyping>=0.2.30",
    # Hugging Face checkpoints; its NumPy backend reads and writes bfloat16.
    "safetensors>=0.8.0",
    # TFDS imports it to prepare builders without declaring it.
    "importlib_resources>=6",
]

EXTRAS = {
    # Tests: pytest + chex; the official `recurrentgemma` oracle is installed
    # by scripts/setup.sh with --no-deps (it pins absl-py<2, numpy<2.4).
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "einops>=0.7",
        "typeguard>=2,<3",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6",
    ],
    # libtpu: run on Cloud TPU VMs, and compile for TPU topologies ahead of
    # time on a CPU machine.
    "tpu": ["jax[tpu]>=0.11.2,<0.13"],
    "cuda": ["jax[cuda13]>=0.11.2,<0.13"],
    # TensorFlow only to convert a tfrecord-format TFDS dataset to
    # array_record once; training always reads array_record through grain.
    "tf": ["tensorflow>=2.18"],
}

setuptools.setup(
    name="recurrentgemma_jax",
    version=VERSION,
    description=(
        "Train, evaluate and sample Griffin, Hawk and RecurrentGemma models "
        "in JAX/Flax on TPU pod slices and GPUs."
    ),
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.12",
    packages=setuptools.find_packages(
        include=["recurrentgemma_jax", "recurrentgemma_jax.*",
                 "pallas_kernels", "pallas_kernels.*"]
    ),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    # `recurrentgemma VERB`: train, evaluate, sample, convert, plot, ...
    entry_points={"console_scripts": _cli().CONSOLE_SCRIPTS},
    classifiers=[
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
