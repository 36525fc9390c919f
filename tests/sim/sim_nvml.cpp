// The emulated device's NVML: built as a shared library named libnvidia-ml.so.1, found by train/energy.cpp's
// dlopen through LD_LIBRARY_PATH. It knows the devices the emulated runtime shows (POLDER_SIM_DEVICES,
// default 1) at the PCI bus ids cudaDeviceGetPCIBusId gives them ("0000:19:00.0" for device 0), and their
// energy counter reads as a 700 W H100 busy since nvmlInit (millijoules from steady_clock).
// POLDER_SIM_NVML=no-energy makes the counter unsupported (a pre-Volta GPU), =no-driver makes nvmlInit fail
// as without a loaded driver: the two ways polder's meter becomes unavailable on real machines.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

extern "C" {
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st* nvmlDevice_t;
}

namespace {

// nvml.h's values.
constexpr nvmlReturn_t kSuccess = 0, kUninitialized = 1, kInvalidArgument = 2, kNotSupported = 3,
                       kNotFound = 6, kInsufficientSize = 7, kDriverNotLoaded = 9;
constexpr double kWatts = 700;  // H100 SXM board power
constexpr int kMaxDevices = 16;
constexpr int kFirstBus = 0x19;  // sim_cudart.cpp: cudaDeviceGetPCIBusId

struct nvmlDeviceSlot {
  int index;
};

std::mutex g_mu;
int g_init_count = 0;
std::chrono::steady_clock::time_point g_since;
nvmlDeviceSlot g_devices[kMaxDevices];

int device_count() {
  const char* s = std::getenv("POLDER_SIM_DEVICES");
  const int n = s ? std::atoi(s) : 1;
  return n < 0 ? 0 : n > kMaxDevices ? kMaxDevices : n;
}

bool knob(const char* value) {
  const char* s = std::getenv("POLDER_SIM_NVML");
  return s && std::strcmp(s, value) == 0;
}

bool initialised() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_init_count > 0;
}

nvmlDevice_t handle(int index) {
  g_devices[index].index = index;
  return reinterpret_cast<nvmlDevice_t>(&g_devices[index]);
}

int index_of(nvmlDevice_t d) {
  const auto* slot = reinterpret_cast<const nvmlDeviceSlot*>(d);
  if (slot < g_devices || slot >= g_devices + device_count()) return -1;
  return static_cast<int>(slot - g_devices);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) nvmlReturn_t nvmlInit_v2() {
  if (knob("no-driver")) return kDriverNotLoaded;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_init_count++ == 0) g_since = std::chrono::steady_clock::now();
  return kSuccess;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlInit() {
  return nvmlInit_v2();
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlInitWithFlags(unsigned int) {
  return nvmlInit_v2();
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlShutdown() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_init_count == 0) return kUninitialized;
  --g_init_count;
  return kSuccess;
}

__attribute__((visibility("default"))) const char* nvmlErrorString(nvmlReturn_t r) {
  switch (r) {
    case kSuccess:
      return "Success";
    case kUninitialized:
      return "Uninitialized";
    case kInvalidArgument:
      return "Invalid Argument";
    case kNotSupported:
      return "Not Supported";
    case kNotFound:
      return "Not Found";
    case kInsufficientSize:
      return "Insufficient Size";
    case kDriverNotLoaded:
      return "Driver Not Loaded";
    default:
      return "Unknown Error";
  }
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count) {
  if (!initialised()) return kUninitialized;
  if (!count) return kInvalidArgument;
  *count = static_cast<unsigned>(device_count());
  return kSuccess;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index,
                                                                                  nvmlDevice_t* device) {
  if (!initialised()) return kUninitialized;
  if (!device || index >= static_cast<unsigned>(device_count())) return kInvalidArgument;
  *device = handle(static_cast<int>(index));
  return kSuccess;
}

// "domain:bus:device.function" or "bus:device.function", hex, as NVML accepts them.
__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char* bus_id,
                                                                                     nvmlDevice_t* device) {
  if (!initialised()) return kUninitialized;
  if (!bus_id || !device) return kInvalidArgument;
  unsigned domain = 0, bus = 0, dev = 0, fn = 0;
  char extra = 0;
  if (std::sscanf(bus_id, "%x:%x:%x.%x%c", &domain, &bus, &dev, &fn, &extra) != 4) {
    domain = 0;
    if (std::sscanf(bus_id, "%x:%x.%x%c", &bus, &dev, &fn, &extra) != 3) return kInvalidArgument;
  }
  const int index = static_cast<int>(bus) - kFirstBus;
  if (domain != 0 || dev != 0 || fn != 0 || index < 0 || index >= device_count()) return kNotFound;
  *device = handle(index);
  return kSuccess;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name,
                                                                      unsigned int length) {
  if (!initialised()) return kUninitialized;
  if (index_of(device) < 0 || !name) return kInvalidArgument;
  const char* n = "NVIDIA H100 80GB HBM3";
  if (length < std::strlen(n) + 1) return kInsufficientSize;
  std::strcpy(name, n);
  return kSuccess;
}

// Millijoules since nvmlInit at kWatts.
__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(
    nvmlDevice_t device, unsigned long long* energy) {
  if (!initialised()) return kUninitialized;
  if (index_of(device) < 0 || !energy) return kInvalidArgument;
  if (knob("no-energy")) return kNotSupported;
  std::chrono::steady_clock::time_point since;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    since = g_since;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
  *energy = static_cast<unsigned long long>(seconds * kWatts * 1000.0);
  return kSuccess;
}

// Milliwatts.
__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device,
                                                                            unsigned int* power) {
  if (!initialised()) return kUninitialized;
  if (index_of(device) < 0 || !power) return kInvalidArgument;
  if (knob("no-energy")) return kNotSupported;
  *power = static_cast<unsigned>(kWatts * 1000);
  return kSuccess;
}

}  // extern "C"
