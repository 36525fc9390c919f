#!/usr/bin/env bash
# Fetches the header-only cuDNN frontend (C++ graph API, Apache-2.0/MIT) that polder's cuDNN SDPA attention path
# compiles against: the headers ship inside PyPI's nvidia-cudnn-frontend wheel (include/, 87 files, 3.2 MB).
# The wheel is pinned by version and SHA-256 and unpacked into .deps/cudnn-frontend-<version>/include, which
# CMake finds by default (POLDER_CUDNN_FRONTEND_DIR overrides it). Idempotent; without network or pip it prints
# one line and exits 0: polder then builds without the cuDNN path (the attention dispatcher says so at run time).
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.32.0
wheel=nvidia_cudnn_frontend-${version}-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
sha256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
dest=.deps/cudnn-frontend-${version}

if [[ -f $dest/include/cudnn_frontend.h ]]; then exit 0; fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch_cudnn_frontend: python3 -m pip not available; building without the cuDNN SDPA path"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The headers are the same in every wheel of a version; this one is pinned (any host can download it).
if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
     --platform manylinux_2_28_x86_64 --dest "$tmp" "nvidia-cudnn-frontend==${version}" >"$tmp/pip.log" 2>&1; then
  echo "fetch_cudnn_frontend: pip download of nvidia-cudnn-frontend==${version} failed ($(tail -n 1 "$tmp/pip.log")); building without the cuDNN SDPA path"
  exit 0
fi
if [[ ! -f $tmp/$wheel ]]; then
  echo "fetch_cudnn_frontend: expected $wheel, got: $(ls "$tmp" | grep -v pip.log | tr '\n' ' '); building without the cuDNN SDPA path"
  exit 0
fi
got=$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)
if [[ $got != "$sha256" ]]; then
  echo "fetch_cudnn_frontend: $wheel has SHA-256 $got, expected $sha256; not using it"
  exit 1
fi
mkdir -p "$dest.partial"
python3 - "$tmp/$wheel" "$dest.partial" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.startswith("include/") or "/licenses/" in n]
    z.extractall(sys.argv[2], names)
PY
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "fetch_cudnn_frontend: cuDNN frontend ${version} headers in $dest/include"
