// The emulated NVML (sim_nvml.cpp, loaded as libnvidia-ml.so.1 from LD_LIBRARY_PATH) through polder's own
// EnergyMeter (train/energy.cpp): the emulated device's bus id has a 700 W counter, other bus ids are not
// found, and the knobs give the two unavailable cases real machines have (no energy counter, no driver). The
// no-driver case runs in a fresh process: NVML is initialised once per process.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "train/energy.h"

using polder::train::EnergyMeter;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TEST_CASE("emulated NVML: the emulated device's energy counter runs at 700 W", "[sim][nvml]") {
  const auto outer = std::chrono::steady_clock::now();
  EnergyMeter m("0000:19:00.0");  // sim_cudart.cpp's bus id of device 0
  const auto inner = std::chrono::steady_clock::now();
  INFO("NVML: " << m.reason());
  REQUIRE(m.available());
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const double low = seconds_since(inner);
  const double j = m.joules();
  const double high = seconds_since(outer);
  INFO(j << " J in " << low << " to " << high << " s");
  CHECK(j >= 700 * low - 0.002);  // the counter is in whole millijoules
  CHECK(j <= 700 * high + 0.002);
}

TEST_CASE("emulated NVML: unknown or malformed bus ids are not found", "[sim][nvml]") {
  EnergyMeter other("0000:00:00.0");
  CHECK_FALSE(other.available());
  CHECK(other.reason().find("NVML has no device at PCI bus id 0000:00:00.0: Not Found") != std::string::npos);
  EnergyMeter second("0000:1a:00.0");  // device 1, absent unless POLDER_SIM_DEVICES >= 2
  CHECK_FALSE(second.available());
  EnergyMeter bad("not-a-bus-id");
  CHECK_FALSE(bad.available());
  CHECK(bad.reason().find("Invalid Argument") != std::string::npos);
  CHECK(other.joules() == 0.0);
}

TEST_CASE("emulated NVML: POLDER_SIM_NVML=no-energy is a GPU without the counter", "[sim][nvml]") {
  setenv("POLDER_SIM_NVML", "no-energy", 1);
  EnergyMeter m("0000:19:00.0");
  unsetenv("POLDER_SIM_NVML");
  CHECK_FALSE(m.available());
  CHECK(m.reason().find("nvmlDeviceGetTotalEnergyConsumption: Not Supported") != std::string::npos);
}

TEST_CASE("emulated NVML: the symbols and device count NVML has", "[sim][nvml]") {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  REQUIRE(lib != nullptr);
  for (const char* name : {"nvmlInit_v2", "nvmlShutdown", "nvmlDeviceGetHandleByPciBusId_v2",
                           "nvmlDeviceGetTotalEnergyConsumption", "nvmlErrorString", "nvmlDeviceGetCount_v2"})
    CHECK(dlsym(lib, name) != nullptr);
  auto count = reinterpret_cast<int (*)(unsigned*)>(dlsym(lib, "nvmlDeviceGetCount_v2"));
  auto init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
  auto shutdown = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlShutdown"));
  unsigned n = 0;
  REQUIRE(init() == 0);
  setenv("POLDER_SIM_DEVICES", "3", 1);
  CHECK(count(&n) == 0);
  CHECK(n == 3);
  unsetenv("POLDER_SIM_DEVICES");
  CHECK(count(&n) == 0);
  CHECK(n == 1);
  CHECK(shutdown() == 0);
  dlclose(lib);
}

TEST_CASE("emulated NVML child: no driver", "[.nvml-child]") {
  EnergyMeter m("0000:19:00.0");
  CHECK_FALSE(m.available());
  CHECK(m.reason() == "nvmlInit failed: Driver Not Loaded");
}

TEST_CASE("emulated NVML: POLDER_SIM_NVML=no-driver fails nvmlInit", "[sim][nvml]") {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setenv("POLDER_SIM_NVML", "no-driver", 1);
    execl("/proc/self/exe", "test_sim_nvml", "emulated NVML child: no driver", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
