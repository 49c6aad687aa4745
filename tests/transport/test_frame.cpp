// The wire frame of byte-stream transports: CRC-32C against published vectors and a
// bitwise reference; header round trips over every kind, dtype and extreme tag/count;
// every rejection path of decode_header and check_payload throws frame_error naming the
// field. fuzz/frame_fuzz.cpp feeds the same decoder random streams.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "runtime/rng.hpp"
#include "transport/frame.hpp"

using namespace troupe;

namespace {

constexpr uint64_t kMaxU64 = ~uint64_t(0);

// Bit by bit, straight from the definition (reflected polynomial 0x82F63B78, init and
// final xor all ones): what the table and SSE4.2 paths must agree with.
uint32_t crc32c_bitwise(const uint8_t* p, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

std::vector<uint8_t> encoded(const frame_header& h) {
  std::vector<uint8_t> b(kFrameHeaderBytes);
  encode_header(h, b.data());
  return b;
}

// Rewrites the header checksum (bytes 36..39) after a test edits bytes 0..35, so the
// decoder gets past the checksum to the field check under test.
void reseal(std::vector<uint8_t>& b) {
  const uint32_t c = crc32c(b.data(), 36);
  for (size_t i = 0; i < 4; ++i) b[36 + i] = uint8_t(c >> (8 * i));
}

// The message of the frame_error that decoding b throws; "" if it decodes. Any other
// exception type fails the test case.
std::string decode_error(const std::vector<uint8_t>& b, const frame_limits& limits, size_t n = kFrameHeaderBytes) {
  try {
    decode_header(b.data(), n, limits);
  } catch (const frame_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const char* word) { return s.find(word) != std::string::npos; }

frame_header data_header(uint32_t src = 0, dtype t = dtype::f32, uint64_t count = 3) {
  frame_header h;
  h.kind = frame_kind::data;
  h.src = src;
  h.type = t;
  h.tag = 77;
  h.count = count;
  h.payload_crc = 0x12345678u;
  return h;
}

}  // namespace

TEST_CASE("frame: crc32c published vectors") {
  const char* digits = "123456789";
  CHECK(crc32c(digits, 9) == 0xE3069283u);
  const std::vector<uint8_t> zeros(32, 0x00), ones(32, 0xFF);
  CHECK(crc32c(zeros.data(), zeros.size()) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), ones.size()) == 0x62A8AB43u);
  CHECK(crc32c(nullptr, 0) == 0u);
}

TEST_CASE("frame: crc32c chaining over pieces equals one call over the whole") {
  rng r(11);
  std::vector<uint8_t> buf(301);
  for (auto& b : buf) b = uint8_t(r.next_u64());
  const uint32_t whole = crc32c(buf.data(), buf.size());
  for (size_t cut : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(150), size_t(300), size_t(301)}) {
    CAPTURE(cut);
    CHECK(crc32c(buf.data() + cut, buf.size() - cut, crc32c(buf.data(), cut)) == whole);
  }
}

TEST_CASE("frame: crc32c matches a bitwise reference on odd lengths 0..1000 at unaligned starts") {
  rng r(7);
  std::vector<uint8_t> buf(1000 + 8);
  for (auto& b : buf) b = uint8_t(r.next_u64());
  for (size_t n = 0; n <= 1000; n += 1 + 2 * size_t(r.below(8))) {  // odd steps: every residue mod 8
    for (size_t start = 0; start < 8; ++start) {
      CAPTURE(n);
      CAPTURE(start);
      const uint32_t seed = uint32_t(r.next_u64());
      REQUIRE(crc32c(buf.data() + start, n) == crc32c_bitwise(buf.data() + start, n));
      REQUIRE(crc32c(buf.data() + start, n, seed) == crc32c_bitwise(buf.data() + start, n, seed));
    }
  }
}

TEST_CASE("frame: a bye whose reason is not u8 text is refused") {
  frame_header h;
  h.kind = frame_kind::bye;
  h.type = dtype::f32;
  h.count = 1;
  const auto b = encoded(h);
  CHECK_THROWS_WITH_AS(decode_header(b.data(), b.size(), frame_limits{}),
                       doctest::Contains("a bye with dtype 0"), frame_error);
  h.kind = frame_kind::auth;
  const auto c = encoded(h);
  CHECK_THROWS_WITH_AS(decode_header(c.data(), c.size(), frame_limits{}),
                       doctest::Contains("an auth with dtype 0") , frame_error);
}

TEST_CASE("frame: header round trip for every kind and dtype, extreme tags and counts") {
  const frame_limits limits{5, kMaxU64};
  for (frame_kind kind : {frame_kind::hello, frame_kind::data, frame_kind::bye, frame_kind::auth, frame_kind::ping}) {
    for (dtype t : {dtype::f32, dtype::i32, dtype::u8}) {
      // A bye's reason and an auth's nonces are bytes (their own case below).
      if ((kind == frame_kind::bye || kind == frame_kind::auth) && t != dtype::u8) continue;
      // hello's count is the world size; other kinds run from 0 to the most that
      // max_payload_bytes allows for the dtype (2^64-1 for u8).
      std::vector<uint64_t> counts = {limits.world_size};
      if (kind != frame_kind::hello) counts = {0, 1, 12345, kMaxU64 / dtype_size(t)};
      if (kind == frame_kind::ping) counts = {0};  // a ping carries nothing
      for (uint64_t tag : {uint64_t(0), uint64_t(1), kMaxU64}) {
        for (uint64_t count : counts) {
          for (uint32_t src : {0u, limits.world_size - 1}) {
            CAPTURE(int(kind));
            CAPTURE(int(t));
            CAPTURE(tag);
            CAPTURE(count);
            frame_header h;
            h.kind = kind;
            h.src = src;
            h.type = t;
            h.tag = tag;
            h.count = count;
            h.payload_crc = uint32_t(tag ^ count ^ 0xA5A5A5A5u);
            const auto b = encoded(h);
            const frame_header d = decode_header(b.data(), b.size(), limits);
            CHECK(d.kind == h.kind);
            CHECK(d.src == h.src);
            CHECK(d.type == h.type);
            CHECK(d.tag == h.tag);
            CHECK(d.count == h.count);
            CHECK(d.payload_crc == h.payload_crc);
          }
        }
      }
    }
  }
}

TEST_CASE("frame: the largest src of the largest world round-trips") {
  const frame_limits limits{~uint32_t(0), 1024};
  const auto b = encoded(data_header(~uint32_t(0) - 1));
  CHECK(decode_header(b.data(), b.size(), limits).src == ~uint32_t(0) - 1);
}

TEST_CASE("frame: a header of the wrong size is rejected before a byte is read") {
  auto b = encoded(data_header());
  b.resize(64);
  for (size_t n : {size_t(0), size_t(1), size_t(39), size_t(41), size_t(64)}) {
    CAPTURE(n);
    CHECK_THROWS_WITH_AS(decode_header(b.data(), n, frame_limits{}), doctest::Contains("header of"), frame_error);
  }
}

TEST_CASE("frame: bad magic and version are named") {
  auto b = encoded(data_header());
  std::memcpy(b.data(), "GET ", 4);  // an HTTP client on our port
  CHECK(contains(decode_error(b, {}), "bad magic 0x20544547 (expected 0x46505254"));

  b = encoded(data_header());
  b[4] = 7;
  CHECK(contains(decode_error(b, {}), "version 7 (this build speaks 1)"));
}

TEST_CASE("frame: every single-byte change of a header is rejected") {
  const frame_limits limits{4, 1 << 20};
  const auto good = encoded(data_header(3));
  REQUIRE(decode_error(good, limits).empty());
  // Magic and version are checked first; any other change is caught by the header CRC
  // (CRC-32C detects every error burst of up to 32 bits).
  int passed = 0;
  for (size_t at = 0; at < kFrameHeaderBytes; ++at) {
    const char* want = at < 4 ? "bad magic" : at < 6 ? "version" : "header checksum";
    for (int x = 1; x < 256; ++x) {
      auto b = good;
      b[at] ^= uint8_t(x);
      const std::string msg = decode_error(b, limits);
      if (msg.empty()) ++passed;
      if (!contains(msg, want)) {
        CAPTURE(at);
        CAPTURE(x);
        CHECK(msg == want);
      }
    }
  }
  CHECK(passed == 0);
}

TEST_CASE("frame: field checks behind the header checksum name the field") {
  const frame_limits limits{4, 1 << 20};

  SUBCASE("kind out of range") {
    for (uint16_t kind : {uint16_t(0), uint16_t(6), uint16_t(0xFFFF)}) {
      CAPTURE(kind);
      auto b = encoded(data_header());
      b[6] = uint8_t(kind);
      b[7] = uint8_t(kind >> 8);
      reseal(b);
      CHECK(contains(decode_error(b, limits), ("kind " + std::to_string(kind)).c_str()));
    }
  }
  SUBCASE("src at or above the world size") {
    for (uint32_t src : {4u, 5u, ~0u}) {
      CAPTURE(src);
      const std::string msg = decode_error(encoded(data_header(src)), limits);
      CHECK(contains(msg, ("src rank " + std::to_string(src) + " of a world of 4").c_str()));
    }
  }
  SUBCASE("dtype out of range") {
    for (int t : {3, 255}) {
      CAPTURE(t);
      auto b = encoded(data_header());
      b[12] = uint8_t(t);
      reseal(b);
      CHECK(contains(decode_error(b, limits), ("dtype " + std::to_string(t)).c_str()));
    }
  }
  SUBCASE("reserved bytes not zero") {
    for (size_t at : {13, 14, 15}) {
      CAPTURE(at);
      auto b = encoded(data_header());
      b[at] = 1;
      reseal(b);
      CHECK(contains(decode_error(b, limits), "reserved"));
    }
  }
  SUBCASE("payload over max_payload_bytes") {
    // 1 MiB of f32 is 262144 elements: one more is over, exactly that many is not.
    CHECK(decode_error(encoded(data_header(0, dtype::f32, 262144)), limits).empty());
    for (uint64_t count : {uint64_t(262145), kMaxU64}) {
      CAPTURE(count);
      CHECK(contains(decode_error(encoded(data_header(0, dtype::f32, count)), limits), "over the limit of 1048576"));
    }
    // Bye is bounded the same way: its count is the reason's length.
    auto bye = data_header(0, dtype::u8, (1 << 20) + 1);
    bye.kind = frame_kind::bye;
    CHECK(contains(decode_error(encoded(bye), limits), "over the limit"));
  }
  SUBCASE("hello whose world size is not ours") {
    for (uint64_t count : {uint64_t(0), uint64_t(3), uint64_t(5), kMaxU64}) {
      CAPTURE(count);
      auto h = data_header(0, dtype::u8, count);
      h.kind = frame_kind::hello;
      CHECK(contains(decode_error(encoded(h), limits), "hello from a world of"));
    }
  }
}

TEST_CASE("frame: check_payload passes the sent bytes and fails on any flipped bit") {
  rng r(3);
  std::vector<float> payload(37);
  for (auto& x : payload) x = float(r.normal());
  frame_header h = data_header(0, dtype::f32, payload.size());
  h.payload_crc = crc32c(payload.data(), payload.size() * sizeof(float));
  const auto b = encoded(h);
  const frame_header d = decode_header(b.data(), b.size(), frame_limits{1, 1 << 20});
  CHECK_NOTHROW(check_payload(d, payload.data()));

  auto* bytes = reinterpret_cast<uint8_t*>(payload.data());
  for (size_t bit : {size_t(0), size_t(1), size_t(8 * 37 * 4 / 2 + 3), size_t(8 * 37 * 4 - 1)}) {
    CAPTURE(bit);
    bytes[bit / 8] ^= uint8_t(1u << (bit % 8));
    CHECK_THROWS_WITH_AS(check_payload(d, payload.data()), doctest::Contains("payload checksum"), frame_error);
    bytes[bit / 8] ^= uint8_t(1u << (bit % 8));
  }
  CHECK_NOTHROW(check_payload(d, payload.data()));
}

TEST_CASE("frame: a hello carries no payload whatever its count") {
  frame_header h;
  h.kind = frame_kind::hello;
  h.count = 3;
  h.payload_crc = 0;  // CRC-32C of no bytes
  const auto b = encoded(h);
  const frame_header d = decode_header(b.data(), b.size(), frame_limits{3, 1 << 20});
  CHECK_NOTHROW(check_payload(d, nullptr));
}

TEST_CASE("frame: crc32c of long buffers (three interleaved streams, joined) matches the bitwise reference") {
  rng r(11);
  std::vector<uint8_t> buf(200000 + 8);
  for (auto& b : buf) b = uint8_t(r.next_u64());
  for (size_t n : {size_t(12287), size_t(12288), size_t(12289), size_t(24576 + 5), size_t(100003), size_t(200000)})
    for (size_t start : {size_t(0), size_t(1), size_t(3)}) {
      CAPTURE(n);
      CAPTURE(start);
      const uint32_t seed = uint32_t(r.next_u64());
      CHECK(crc32c(buf.data() + start, n) == crc32c_bitwise(buf.data() + start, n));
      CHECK(crc32c(buf.data() + start, n, seed) == crc32c_bitwise(buf.data() + start, n, seed));
      // And chained over an uneven cut, through both paths.
      const size_t cut = n / 3 + 1;
      CHECK(crc32c(buf.data() + start + cut, n - cut, crc32c(buf.data() + start, cut)) ==
            crc32c_bitwise(buf.data() + start, n));
    }
}
