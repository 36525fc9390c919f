// safetensors: round trip of every dtype, the byte layout of a tiny file written by hand from the spec,
// and clear errors for truncated or malformed files.
#include <cstdio>
#include <fstream>

#include "core/safetensors.h"
#include "tests/testing.h"

using namespace polder;
using namespace polder::testing;

namespace {
std::string tmp_path(const std::string& name) {
  return std::string(POLDER_BINARY_DIR) + "/tests/" + name;
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
std::string with_header(const std::string& json, const std::string& data) {
  uint64_t n = json.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + json + data;
}
}  // namespace

TEST_CASE("safetensors round trip keeps names, order, dtypes, shapes, values and metadata", "[safetensors]") {
  safetensors::NamedTensors ts = {
      {"model.embed_tokens.weight", randn({7, 3}, 1, DType::f32)},
      {"b16", randn({5}, 2, DType::f32).to(DType::bf16)},
      {"h16", randn({2, 2}, 3, DType::f32).to(DType::f16)},
      {"d", randn({3}, 4)},
      {"ids", Tensor::from_vector<int64_t>({1, -2, 3}, {3})},
      {"scalar", Tensor::scalar(2.5)},
  };
  const std::string path = tmp_path("roundtrip.safetensors");
  safetensors::save(path, ts, {{"format", "pt"}});
  auto f = safetensors::File::open(path);
  CHECK(f.metadata().at("format") == "pt");
  std::vector<std::string> names;
  for (auto& [n, t] : ts) names.push_back(n);
  CHECK(f.names() == names);
  for (auto& [n, t] : ts) {
    Tensor l = f.load(n);
    CHECK(l.dtype() == t.dtype());
    CHECK(l.shape() == t.shape());
    CHECK(std::memcmp(l.raw_data(), t.raw_data(), t.nbytes()) == 0);
  }
}

TEST_CASE("safetensors reads a file laid out by hand from the format spec", "[safetensors]") {
  // Two F32 values 1.5, -2 under "a" (shape [2]) and one I32 7 under "b".
  float a[2] = {1.5f, -2.0f};
  int32_t b = 7;
  std::string data(reinterpret_cast<char*>(a), 8);
  data += std::string(reinterpret_cast<char*>(&b), 4);
  const std::string path = tmp_path("handmade.safetensors");
  write_bytes(path, with_header(R"({"b":{"dtype":"I32","shape":[],"data_offsets":[8,12]},)"
                                R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                data));
  auto f = safetensors::File::open(path);
  CHECK(f.names() == std::vector<std::string>{"a", "b"});
  CHECK(f.load("a").to_vector<float>() == std::vector<float>{1.5f, -2.0f});
  CHECK(f.load("b").item() == 7.0);
}

TEST_CASE("malformed safetensors files give one clear error naming the file", "[safetensors][errors]") {
  const std::string path = tmp_path("bad.safetensors");
  write_bytes(path, "abc");
  require_error([&] { safetensors::File::open(path); }, "too short for its 8-byte header length");
  write_bytes(path, with_header("{not json", ""));
  require_error([&] { safetensors::File::open(path); }, "invalid JSON header");
  write_bytes(
      path, with_header(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')));
  require_error([&] { safetensors::File::open(path); },
                "tensor 'w': bytes [0, 16) lie outside the 8-byte data section");
  write_bytes(path,
              with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
  require_error([&] { safetensors::File::open(path); }, "8 bytes stored but shape (3) of f32 needs 12");
  write_bytes(path, with_header(R"({"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})",
                                std::string(1, '\0')));
  require_error([&] { safetensors::File::open(path); }, "dtype 'F8_E4M3' is not supported");
  require_error([&] { safetensors::File::open(tmp_path("missing.safetensors")); },
                "cannot open safetensors file");
  uint64_t huge = 1000;
  write_bytes(path, std::string(reinterpret_cast<char*>(&huge), 8) + "{}");
  require_error([&] { safetensors::File::open(path); }, "is truncated: header of 1000 bytes");
}

#include "core/sha256.h"

TEST_CASE("SHA-256 matches the FIPS 180-4 test vectors", "[sha256]") {
  CHECK(Sha256().hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 a;
  a.update("abc");
  CHECK(a.hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 b;  // 448-bit message, fed in uneven pieces
  std::string m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  b.update(m.substr(0, 5));
  b.update(m.substr(5));
  CHECK(b.hex() == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 c;
  std::string million(1000000, 'a');
  c.update(million);
  CHECK(c.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
