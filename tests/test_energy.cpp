// The NVML energy meter: on a machine without the NVIDIA driver it is unavailable with a reason and reads 0;
// on a GPU it counts the joules of real work (a GEMM loop) as positive and below the board's power limit
// times the elapsed time.
#include <catch2/catch.hpp>

#include <chrono>

#include "core/cuda_context.h"
#include "core/ops.h"
#include "testing.h"
#include "tests/emulated.h"
#include "train/energy.h"

using namespace polder;

TEST_CASE("energy meter: unavailable without a driver, with a reason", "[energy]") {
  train::EnergyMeter m("0000:00:00.0");
  if (m.available()) {
    WARN("NVML is present here; the unavailable path is not exercised");
    return;
  }
  CHECK_FALSE(m.reason().empty());
  CHECK(m.joules() == 0.0);
  train::EnergyMeter none("");
  CHECK_FALSE(none.available());
}

TEST_CASE("energy meter: a GEMM loop on the GPU uses a plausible amount of energy", "[cuda][energy]") {
  if (!(cuda::compiled() && cuda::device_count() > 0)) {
    WARN("skipped: no CUDA device; [cuda] tests run on a GPU machine");
    return;
  }
  const cuda::DeviceInfo info = cuda::device_info(0);
  train::EnergyMeter m(info.pci_bus_id);
  INFO("NVML: " << m.reason());
  REQUIRE(m.available());
  const int64_t n = testing::gpu_or_emulated<int64_t>(4096, 128);
  Tensor a = testing::randn({n, n}, 1, DType::f32).to(DType::bf16).to(Device::cuda(0));
  auto t0 = std::chrono::steady_clock::now();
  Tensor c;
  for (int i = 0; i < testing::gpu_or_emulated(3000, 20); ++i) c = ops::matmul(a, a);
  cuda::synchronize(0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double j = m.joules();
  INFO(j << " J in " << seconds << " s");
  CHECK(j > 0);
  CHECK(j < 1500.0 * (seconds + 0.2));  // no GPU draws more than ~1.5 kW
}
