#!/usr/bin/env bash
# Download, once and here (where a package registry is reachable), what bench/gpu_check.sh needs
# on a GPU machine whose python3 has CUDA torch, OpenCV, scikit-image and click but no PyAV, no
# kornia and no network: the wheels of the versions installed here (av, kornia, kornia_rs) for
# that machine's Python (3.12 unless PY_VERSION says otherwise), unpacked and packed again as one
# xz archive, bench/wheels/site-py<version>.tar.xz (git-ignored): about 30 MB where the wheels
# are 43 MB, so that the working tree (36 MB, the model weights most of it) and the packages
# travel together under 64 MiB. A wheel is a zip of the files installed, so unpacking the
# archive into a folder on PYTHONPATH installs it as `pip install --no-deps --target` would.
#
#     bench/fetch_gpu_wheels.sh [PY_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
py_version=${1:-3.12}
dest=bench/wheels
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pins=$(python3 - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("av", "kornia", "kornia_rs")))
PY
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# shellcheck disable=SC2086  # the pins are separate words
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
    "${platforms[@]}" -d "$tmp/wheels" $pins
mkdir -p "$tmp/site" "$dest"
for w in "$tmp"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$tmp/site"
    basename "$w"
done
archive="$dest/site-py${py_version}.tar.xz"
tar -C "$tmp/site" -cf - . | xz -9e -T0 >"$archive.partial"
mv "$archive.partial" "$archive"
du -h "$archive"
