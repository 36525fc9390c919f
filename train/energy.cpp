// NVML through dlopen: the four entry points polder needs, declared here with NVML's C ABI (nvml.h:
// nvmlReturn_t is an int enum, nvmlDevice_t an opaque pointer; the _v2 symbols are the current ones).
#include "train/energy.h"

#include <dlfcn.h>

#include <mutex>

namespace polder::train {
namespace {

using nvmlReturn_t = int;
using nvmlDevice_t = void*;
constexpr nvmlReturn_t kNvmlSuccess = 0;

struct Nvml {
  void* lib = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*by_bus_id)(const char*, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*energy)(nvmlDevice_t, unsigned long long*) = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  std::string problem;
};

const Nvml& nvml() {
  static Nvml n;
  static std::once_flag once;
  std::call_once(once, [] {
    n.lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!n.lib) {
      n.problem = "libnvidia-ml.so.1 not found (no NVIDIA driver)";
      return;
    }
    n.init = reinterpret_cast<nvmlReturn_t (*)()>(dlsym(n.lib, "nvmlInit_v2"));
    n.by_bus_id = reinterpret_cast<nvmlReturn_t (*)(const char*, nvmlDevice_t*)>(
        dlsym(n.lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    n.energy = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, unsigned long long*)>(
        dlsym(n.lib, "nvmlDeviceGetTotalEnergyConsumption"));
    n.error_string = reinterpret_cast<const char* (*)(nvmlReturn_t)>(dlsym(n.lib, "nvmlErrorString"));
    if (!n.init || !n.by_bus_id || !n.energy) {
      n.problem =
          "libnvidia-ml.so.1 lacks nvmlInit_v2 / nvmlDeviceGetHandleByPciBusId_v2 / "
          "nvmlDeviceGetTotalEnergyConsumption";
      return;
    }
    const nvmlReturn_t r = n.init();
    if (r != kNvmlSuccess)
      n.problem = std::string("nvmlInit failed: ") + (n.error_string ? n.error_string(r) : std::to_string(r));
  });
  return n;
}

std::string describe(const Nvml& n, nvmlReturn_t r) {
  return n.error_string ? n.error_string(r) : "NVML error " + std::to_string(r);
}

}  // namespace

EnergyMeter::EnergyMeter(const std::string& pci_bus_id) {
  const Nvml& n = nvml();
  if (!n.problem.empty()) {
    reason_ = n.problem;
    return;
  }
  if (pci_bus_id.empty()) {
    reason_ = "no PCI bus id for the device";
    return;
  }
  nvmlReturn_t r = n.by_bus_id(pci_bus_id.c_str(), &device_);
  if (r != kNvmlSuccess) {
    reason_ = "NVML has no device at PCI bus id " + pci_bus_id + ": " + describe(n, r);
    return;
  }
  r = n.energy(device_, &start_mj_);
  if (r != kNvmlSuccess) {
    reason_ = "nvmlDeviceGetTotalEnergyConsumption: " + describe(n, r) + " (needs a Volta or newer GPU)";
    return;
  }
  available_ = true;
}

double EnergyMeter::joules() {
  if (!available_) return 0;
  unsigned long long now = 0;
  if (nvml().energy(device_, &now) != kNvmlSuccess) return 0;
  return static_cast<double>(now - start_mj_) * 1e-3;
}

}  // namespace polder::train
