# shellcheck shell=bash
# Sourced by check.sh and bench_train.sh (from the folder pack.sh made, or from scripts/gpu/ in a checkout):
# puts the packed libraries, cuDNN, NCCL and NVRTC (Python wheels' shared libraries on the GPU machine, found in the
# site-packages) and the CUDA toolkit's lib64 on LD_LIBRARY_PATH. Sets gpu_env_libdirs and prints what it found
# when POLDER_GPU_ENV_QUIET is not set. Safe to source twice.
[[ -n ${POLDER_GPU_ENV_DONE:-} ]] && return 0
gpu_env_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
gpu_env_libdirs=()
[[ -d $gpu_env_here/lib ]] && gpu_env_libdirs+=("$gpu_env_here/lib")
gpu_env_say() { [[ -n ${POLDER_GPU_ENV_QUIET:-} ]] || echo "$@"; }
# POLDER_GPU_ENV_SITES (folders, ':'-separated) replaces Python's site-packages and POLDER_GPU_ENV_SYSTEM=0 skips
# ldconfig and /usr/local/cuda: tests/gpu_env_layouts.sh checks the search on fake cu12 and cu13 wheel layouts.
if [[ -n ${POLDER_GPU_ENV_SITES:-} ]]; then
  gpu_env_sites=$(tr ':' '\n' <<< "$POLDER_GPU_ENV_SITES")
else
  gpu_env_sites=$(timeout 60 python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
fi
# libnvrtc: cuDNN's SDPA engines are compiled at run time (libcudnn_engines_runtime_compiled opens NVRTC).
# libcublasLt/libcublas: every polder binary links cuBLASLt 13; where the CUDA toolkit is absent they come from
# the nvidia-cublas wheel (without them every binary exits 127).
for gpu_env_lib in libcudnn.so.9 libnccl.so.2 libcudart.so.13 libnvrtc.so.13 libcublasLt.so.13 libcublas.so.13; do
  if [[ ${POLDER_GPU_ENV_SYSTEM:-1} != 0 ]] &&
    [[ $gpu_env_lib == libcudart* || $gpu_env_lib == libnvrtc* || $gpu_env_lib == libcublas* ]]; then
    ldconfig -p 2>/dev/null | grep -q "$gpu_env_lib" && continue
    [[ -e /usr/local/cuda/lib64/$gpu_env_lib || -e /usr/local/cuda/lib/$gpu_env_lib ]] && continue
  fi
  gpu_env_found=""
  while read -r gpu_env_dir; do
    [[ -n $gpu_env_dir && -d $gpu_env_dir ]] || continue
    gpu_env_found=$(find "$gpu_env_dir" -maxdepth 5 -name "$gpu_env_lib" -print -quit 2>/dev/null)
    [[ -n $gpu_env_found ]] && break
  done <<< "$gpu_env_sites"
  if [[ -n $gpu_env_found ]]; then
    [[ " ${gpu_env_libdirs[*]} " == *" $(dirname "$gpu_env_found") "* ]] ||
      gpu_env_libdirs+=("$(dirname "$gpu_env_found")")
    gpu_env_say "found $gpu_env_lib: $(readlink -f "$gpu_env_found")"
  else
    gpu_env_say "not found in site-packages: $gpu_env_lib"
  fi
done
if [[ ${POLDER_GPU_ENV_SYSTEM:-1} != 0 ]]; then
  for gpu_env_dir in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d $gpu_env_dir ]] && gpu_env_libdirs+=("$gpu_env_dir")
  done
fi
if ((${#gpu_env_libdirs[@]})); then
  LD_LIBRARY_PATH=$(IFS=:; echo "${gpu_env_libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
export POLDER_GPU_ENV_DONE=1
