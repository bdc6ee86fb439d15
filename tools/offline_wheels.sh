#!/usr/bin/env bash
# Downloads the wheels that the benchmarks and the data path need beyond a
# JAX + PyTorch GPU image (jax, flax, optax, orbax, chex, torch, triton),
# for a host with no package index, e.g. an air-gapped GPU node:
#
#   bash tools/offline_wheels.sh DIR [PYTHON_VERSION]     # default 3.12
#   # then, on the offline host (no network, no dependency resolution):
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl DIR/data/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#
# DIR/ gets the side-by-side baselines (the official recurrentgemma model,
# accelerated-scan) and what they import; DIR/data/ gets grain and
# tensorflow-datasets with the packages they import that such an image
# lacks. `promise` has no wheel on PyPI, so it is built here.
set -euo pipefail
dir=${1:?usage: tools/offline_wheels.sh DIR [PYTHON_VERSION]}
py=${2:-3.12}
platforms=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 \
    manylinux_2_31 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version "$py" --implementation cp "${platforms[@]}" \
    --platform any -d "$@"
}
mkdir -p "$dir/data"
# The official model pins typeguard < 3 (its jaxtyping checks fail on 4.x).
get "$dir" accelerated-scan==0.3.1 recurrentgemma==1.0.1 ml_collections \
  typeguard==2.13.3
get "$dir/data" grain==0.2.18 array_record dm-tree tensorflow-datasets==4.9.10 \
  immutabledict simple-parsing tensorflow-metadata termcolor toml \
  docstring_parser googleapis-common-protos portpicker importlib_resources \
  tensorboardX
python3 -m pip wheel -q --no-deps -w "$dir/data" promise==2.3
ls "$dir" "$dir/data"
