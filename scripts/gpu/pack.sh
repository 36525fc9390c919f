#!/usr/bin/env bash
# Builds polder with CUDA (sm_80, sm_90) and without oneDNN into build-gpu/, then collects the GPU test binaries,
# the polder CLI, the GPU benchmarks (bench_gpu_*, make_tokens), the scripts (check.sh, bench_train.sh,
# gpu_env.sh, perf_summary.py), configs/*.yaml, bench/torch_llama.py, bench/gpu/attention_torch.py (as
# bench/attention_torch.py) and every non-CUDA shared library the binaries load (found with ldd) into
# gpu-pack/, and that folder as one archive, gpu-pack.tar.xz: the one file carried to the GPU machine (at most
# 60 MB; the folder is ~4x larger, mostly host code, which xz shrinks well). There: `tar -xJf gpu-pack.tar.xz`
# (or python3's tarfile) and run gpu-pack/check.sh.
# CUDA, cuBLAS, cuDNN and NCCL come from that machine; so do glibc and libstdc++, which are newer there.
# Usage: scripts/gpu/pack.sh [extra cmake args...]   env: POLDER_GPU_BUILD, POLDER_GPU_PACK
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${POLDER_GPU_BUILD:-$root/build-gpu}
pack=${POLDER_GPU_PACK:-$root/gpu-pack}
limit_mb=60  # the archive carried to the GPU machine

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
# Every binary links the CUDA kernels statically, so each carries the device code of both architectures:
# --compress-mode=size (nvcc 12.8+, decompressed by the driver at load) shrinks that ~8x and keeps the pack
# under its limit (eleven binaries, Nov 2026: 85 MB uncompressed, 32 MB compressed; fifteen: 38 MB). To switch
# it off, pass -DCMAKE_CUDA_FLAGS=--compress-mode=none (later -D arguments win).
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLDER_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="80;90" -DCMAKE_CUDA_FLAGS="--compress-mode=size" -DPOLDER_ONEDNN=OFF \
  -DPOLDER_TESTS=ON "${launcher[@]}" "$@"

# Test programs with [cuda] cases, plus test_tensor (device copies); the CLI; the GPU benchmarks.
targets=(test_tensor)
for src in "$root"/tests/test_*.cpp; do
  name=$(basename "$src" .cpp)
  [[ $name == test_mpi_* ]] && continue
  if grep -q '\[cuda\]' "$src" && [[ " ${targets[*]} " != *" $name "* ]]; then targets+=("$name"); fi
done
# The tp/pp parity layouts over NCCL (check.sh runs them under mpirun where the machine has several GPUs).
if ninja -C "$build" -t targets all 2> /dev/null | grep -q '^test_mpi_cuda_parity:'; then targets+=(test_mpi_cuda_parity); fi
targets+=(polder make_tokens)
bench_targets=$(ninja -C "$build" -t targets all 2>/dev/null | sed -n 's/^\(bench_gpu[A-Za-z0-9_]*\): .*/\1/p' | sort -u)
# shellcheck disable=SC2206
targets+=($bench_targets)
echo "pack.sh: building ${targets[*]}"
ninja -C "$build" "${targets[@]}"

rm -rf "$pack"
mkdir -p "$pack/bin" "$pack/lib"
for t in "${targets[@]}"; do
  exe=$(find "$build" -type f -name "$t" -perm -u+x | head -n 1)
  [[ -n $exe ]] || { echo "pack.sh: $t was not built" >&2; exit 1; }
  cp "$exe" "$pack/bin/"
  strip --strip-unneeded "$pack/bin/$t"  # host symbols only; the CUDA fatbin is a loaded section and stays
done

# Libraries the GPU machine provides itself (driver, CUDA runtime and math libraries, cuDNN, NCCL, glibc,
# libstdc++/libgcc) are left out; everything else ldd resolves is copied, following symlinks.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libutil\.so|libresolv\.so|libstdc\+\+|libgcc_s|libcuda\.so|libcudart|libcublas|libcublasLt|libcudnn|libnccl|libnvidia|libnvrtc|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver)'
declare -A seen=()
for exe in "$pack"/bin/*; do
  while read -r name _ path _; do
    [[ -n ${path:-} && -f $path ]] || continue
    [[ $name =~ $skip ]] && continue
    [[ -n ${seen[$name]:-} ]] && continue
    seen[$name]=1
    cp -L "$path" "$pack/lib/$name"
  done < <(ldd "$exe" | grep '=>' | grep -v 'not found')
  if ldd "$exe" | grep -q 'not found'; then
    missing=$(ldd "$exe" | grep 'not found' | awk '{print $1}' | grep -Ev "$skip" || true)
    [[ -z $missing ]] || { echo "pack.sh: $exe needs libraries not found here: $missing" >&2; exit 1; }
  fi
done

for f in check.sh bench_train.sh gpu_env.sh perf_summary.py; do cp "$root/scripts/gpu/$f" "$pack/"; done
mkdir -p "$pack/configs" "$pack/bench"
cp "$root"/configs/*.yaml "$pack/configs/"
cp "$root/bench/torch_llama.py" "$pack/bench/"
[[ -f $root/bench/gpu/attention_torch.py ]] && cp "$root/bench/gpu/attention_torch.py" "$pack/bench/"
{
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "nvcc: $(nvcc --version | tail -n 1)"
  echo "cmake: -DPOLDER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80;90 -DCMAKE_CUDA_FLAGS=--compress-mode=size -DPOLDER_ONEDNN=OFF $*"
  echo "binaries: ${targets[*]}"
  echo "libraries: $(ls "$pack/lib" | tr '\n' ' ')"
} > "$pack/MANIFEST"

size_kb=$(du -sk "$pack" | cut -f1)
echo "pack.sh: $pack holds ${#targets[@]} binaries and $(ls "$pack/lib" | wc -l) libraries, $((size_kb / 1024)) MB"
du -sh "$pack"/bin/* "$pack"/lib/* 2>/dev/null | sort -h | tail -n 8
archive=$pack.tar.xz
tar -C "$(dirname "$pack")" -cf - "$(basename "$pack")" | xz -6 -T2 > "$archive.partial"
mv "$archive.partial" "$archive"
archive_kb=$(du -sk "$archive" | cut -f1)
echo "pack.sh: $archive is $((archive_kb / 1024)) MB"
if ((archive_kb > limit_mb * 1024)); then
  echo "pack.sh: $archive is over ${limit_mb} MB" >&2
  exit 1
fi
