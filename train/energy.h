// Energy of the GPU this process drives, from NVML's cumulative counter (nvmlDeviceGetTotalEnergyConsumption,
// millijoules since the driver loaded; Volta and newer). NVML is loaded at run time (dlopen of
// libnvidia-ml.so.1, which comes with the driver), so polder needs neither its headers nor a link to it, and
// a machine without it simply reports energy as unavailable.
#pragma once

#include <string>

namespace polder::train {

class EnergyMeter {
 public:
  // The device with this PCI bus id (core/cuda_context DeviceInfo::pci_bus_id). Never throws: when NVML, the
  // device or its energy counter is missing, available() is false and reason() says why.
  explicit EnergyMeter(const std::string& pci_bus_id);
  bool available() const { return available_; }
  const std::string& reason() const { return reason_; }
  // Joules used by the device since this meter was created (0 when unavailable).
  double joules();

 private:
  bool available_ = false;
  std::string reason_;
  void* device_ = nullptr;
  unsigned long long start_mj_ = 0;
};

inline double joules_to_kwh(double j) {
  return j / 3.6e6;
}

}  // namespace polder::train
