#include "transport/frame.hpp"

#include <array>
#include <cstdio>
#include <cstring>

namespace troupe {

namespace {

// Reflected CRC-32C polynomial.
constexpr uint32_t kPoly = 0x82F63B78u;

std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}

uint32_t crc32c_table(const uint8_t* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_table();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// SSE4.2's crc32 instruction computes exactly this polynomial, 8 bytes at a time; one
// instruction's result feeds the next, so a single stream waits out its latency (3 cycles)
// on every word. Long buffers run three streams at once over consecutive blocks of kBlock
// bytes and join them: the CRC register is linear, so the register after A|B from state s
// is shift(register after A, |B|) xor (register after B from 0), where shift(c, L)
// multiplies c by x^(8L) mod P: four table lookups (kShift, built once by running the
// register over L zero bytes from each byte value in each position).
constexpr size_t kBlock = 4096;

__attribute__((target("sse4.2"))) uint32_t crc32c_one(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
  }
  uint32_t c32 = uint32_t(c);
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
  return c32;
}

struct shift_table {
  uint32_t t[4][256];
  shift_table() {
    static const uint8_t zeros[kBlock] = {};
    for (int k = 0; k < 4; ++k)
      for (uint32_t b = 0; b < 256; ++b) t[k][b] = crc32c_one(zeros, kBlock, b << (8 * k));
  }
  uint32_t operator()(uint32_t c) const {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
  }
};

__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const uint8_t* p, size_t n, uint32_t crc) {
  if (n >= 3 * kBlock) {
    static const shift_table shift;
    uint64_t a = crc;
    for (; n >= 3 * kBlock; n -= 3 * kBlock, p += 3 * kBlock) {
      uint64_t b = 0, c = 0;
      for (size_t i = 0; i < kBlock; i += 8) {
        uint64_t x, y, z;
        std::memcpy(&x, p + i, 8);
        std::memcpy(&y, p + kBlock + i, 8);
        std::memcpy(&z, p + 2 * kBlock + i, 8);
        a = __builtin_ia32_crc32di(a, x);
        b = __builtin_ia32_crc32di(b, y);
        c = __builtin_ia32_crc32di(c, z);
      }
      a = shift(shift(uint32_t(a)) ^ uint32_t(b)) ^ uint32_t(c);
    }
    crc = uint32_t(a);
  }
  return crc32c_one(p, n, crc);
}
#endif

template <class T>
void put(uint8_t* out, size_t at, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out[at + i] = uint8_t(uint64_t(v) >> (8 * i));
}

template <class T>
T get(const uint8_t* in, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(in[at + i]) << (8 * i);
  return T(v);
}

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  crc = hw ? crc32c_sse42(p, n, crc) : crc32c_table(p, n, crc);
#else
  crc = crc32c_table(p, n, crc);
#endif
  return ~crc;
}

void encode_header(const frame_header& h, uint8_t* out) {
  std::memset(out, 0, kFrameHeaderBytes);
  put<uint32_t>(out, 0, kFrameMagic);
  put<uint16_t>(out, 4, kFrameVersion);
  put<uint16_t>(out, 6, uint16_t(h.kind));
  put<uint32_t>(out, 8, h.src);
  put<uint8_t>(out, 12, uint8_t(h.type));
  put<uint64_t>(out, 16, h.tag);
  put<uint64_t>(out, 24, h.count);
  put<uint32_t>(out, 32, h.payload_crc);
  put<uint32_t>(out, 36, crc32c(out, 36));
}

frame_header decode_header(const uint8_t* bytes, size_t n, const frame_limits& limits) {
  if (n != kFrameHeaderBytes)
    throw frame_error("frame: header of " + std::to_string(n) + " bytes (expected " +
                      std::to_string(kFrameHeaderBytes) + ")");
  if (uint32_t m = get<uint32_t>(bytes, 0); m != kFrameMagic)
    throw frame_error("frame: bad magic " + hex(m) + " (expected " + hex(kFrameMagic) + ": not a troupe peer)");
  if (uint16_t v = get<uint16_t>(bytes, 4); v != kFrameVersion)
    throw frame_error("frame: version " + std::to_string(v) + " (this build speaks " + std::to_string(kFrameVersion) +
                      ")");
  if (uint32_t want = crc32c(bytes, 36), got = get<uint32_t>(bytes, 36); want != got)
    throw frame_error("frame: header checksum " + hex(got) + " does not match its bytes (" + hex(want) +
                      "): corrupted in transit");
  frame_header h;
  const uint16_t kind = get<uint16_t>(bytes, 6);
  if (kind < uint16_t(frame_kind::hello) || kind > uint16_t(frame_kind::ping))
    throw frame_error("frame: kind " + std::to_string(kind) + " (expected 1 hello, 2 data, 3 bye, 4 auth or 5 ping)");
  h.kind = frame_kind(kind);
  h.src = get<uint32_t>(bytes, 8);
  if (h.src >= limits.world_size)
    throw frame_error("frame: src rank " + std::to_string(h.src) + " of a world of " +
                      std::to_string(limits.world_size));
  const uint8_t type = get<uint8_t>(bytes, 12);
  if (type > uint8_t(dtype::u8))
    throw frame_error("frame: dtype " + std::to_string(type) + " (expected 0 f32, 1 i32 or 2 u8)");
  h.type = dtype(type);
  if ((h.kind == frame_kind::bye || h.kind == frame_kind::auth) && h.type != dtype::u8)
    throw frame_error(std::string("frame: ") + (h.kind == frame_kind::bye ? "a bye" : "an auth") + " with dtype " +
                      std::to_string(type) + " (its payload is bytes: expected 2 u8)");
  if (bytes[13] || bytes[14] || bytes[15]) throw frame_error("frame: reserved bytes 13..15 are not zero");
  h.tag = get<uint64_t>(bytes, 16);
  h.count = get<uint64_t>(bytes, 24);
  h.payload_crc = get<uint32_t>(bytes, 32);
  const uint64_t width = dtype_size(h.type);
  if (h.kind != frame_kind::hello && h.count > limits.max_payload_bytes / width)
    throw frame_error("frame: payload of " + std::to_string(h.count) + " x " + std::to_string(width) +
                      " bytes is over the limit of " + std::to_string(limits.max_payload_bytes));
  if (h.kind == frame_kind::ping && h.count != 0)
    throw frame_error("frame: a ping with " + std::to_string(h.count) + " elements (it has no payload)");
  if (h.kind == frame_kind::hello && h.count != limits.world_size)
    throw frame_error("frame: hello from a world of " + std::to_string(h.count) + " (this one has " +
                      std::to_string(limits.world_size) + ")");
  return h;
}

void check_payload(const frame_header& h, const void* payload) {
  if (uint32_t got = crc32c(payload, h.payload_bytes()); got != h.payload_crc)
    throw frame_error("frame: payload checksum " + hex(got) + " (header says " + hex(h.payload_crc) +
                      "): corrupted in transit");
}

}  // namespace troupe
