#pragma once
// The frame every byte-stream transport (tcp; shared memory later) puts around a message:
// a fixed 40-byte header, then `count` elements of `dtype`. Nothing from the wire is
// trusted: decode_header checks every field against what this end expects and throws
// frame_error naming the field, the value seen and the value expected; the payload's
// checksum is checked before the payload is used. A link that sees a bad frame is closed
// by its transport (the error logged), never crashes the process.
//
// Wire layout, little endian:
//   0  u32 magic        kFrameMagic ("TRPF")
//   4  u16 version      kFrameVersion
//   6  u16 kind         frame_kind
//   8  u32 src          sender's rank (< world size)
//  12  u8  dtype        runtime dtype (f32, i32, u8)
//  13  u8[3] reserved   zero
//  16  u64 tag          message tag (hello: the group's id)
//  24  u64 count        elements of dtype in the payload (hello: the world size, no payload;
//                       bye: the reason's length, u8)
//  32  u32 payload_crc  CRC-32C of the payload bytes
//  36  u32 header_crc   CRC-32C of bytes 0..35
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "runtime/tensor.hpp"

namespace troupe {

constexpr uint32_t kFrameMagic = 0x46505254u;  // "TRPF" read as little-endian bytes
constexpr uint16_t kFrameVersion = 1;
constexpr size_t kFrameHeaderBytes = 40;

enum class frame_kind : uint16_t {
  hello = 1,  // first frame of a link: who is dialling, for which group
  data = 2,   // a message: tag, count elements of dtype
  bye = 3,    // the sender closes the link on purpose (shutdown or abort; payload: the reason, u8)
  auth = 4,   // a step of the link's challenge-response (tag: which step; payload: nonces, MACs, u8)
  ping = 5,   // a heartbeat on an idle link: the sender is alive (no payload)
};

struct frame_header {
  frame_kind kind = frame_kind::data;
  uint32_t src = 0;
  dtype type = dtype::f32;
  uint64_t tag = 0;
  uint64_t count = 0;
  uint32_t payload_crc = 0;
  // A hello's count is the world size: it carries no payload.
  size_t payload_bytes() const { return kind == frame_kind::hello ? 0 : size_t(count) * dtype_size(type); }
};

// What this end accepts.
struct frame_limits {
  uint32_t world_size = 1;                      // src must be below it
  uint64_t max_payload_bytes = uint64_t(1) << 32;  // 4 GiB
};

class frame_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// CRC-32C (Castagnoli), as iSCSI and ext4 use it; `crc` chains calls over pieces.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// Writes h into out[0..kFrameHeaderBytes), filling in magic, version and header_crc.
void encode_header(const frame_header& h, uint8_t* out);

// Reads and checks a header of exactly kFrameHeaderBytes bytes (n is checked too). Throws
// frame_error: "frame: bad magic 0x... (expected 0x46505254)", "frame: version 7 (this
// build speaks 1)", "frame: src rank 9 of a world of 4", "frame: payload of N bytes is over
// the limit of M", ...
frame_header decode_header(const uint8_t* bytes, size_t n, const frame_limits& limits);

// Throws frame_error if the payload's CRC-32C is not the header's.
void check_payload(const frame_header& h, const void* payload);

}  // namespace troupe
