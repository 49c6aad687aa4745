#pragma once
// Cutting a model's parameters into shards of nearly equal size for parameter-shard
// actors. Shard s holds elements [s*N/S, (s+1)*N/S) of the parameters laid end to end in
// table order (N = their total count, without the arena's padding), so a shard boundary
// may fall inside a tensor. Each shard describes its slice with a param_table of its own
// (one entry per piece, keeping the piece's weight decay), so an arena and an optimizer
// over it work on a shard exactly as on a whole model.
#include <memory>
#include <vector>

#include "runtime/arena.hpp"

namespace troupe {

struct shard_piece {
  int param = 0;          // index in the model's table
  int64_t begin = 0;      // first element of the parameter in this shard
  int64_t count = 0;      // elements
  int shard_entry = 0;    // its index in the shard's own table
};

struct shard_layout {
  int index = 0;
  param_table table;  // the shard's pieces as parameters of their own
  std::vector<shard_piece> pieces;
  int64_t numel() const;  // elements it holds (no padding)
};

// `shards` layouts covering every parameter element exactly once; 1 <= shards, and a
// shard may be empty only when the model has fewer elements than shards.
std::vector<std::shared_ptr<const shard_layout>> shard_by_size(const param_table& table, int shards);

// Copies a shard's elements between a whole-model arena and the flat buffer of an arena of
// the shard's table (shard_flat: layout.table.total_numel() floats, padding included).
void copy_into_shard(const arena& whole, const shard_layout& layout, float* shard_flat);
void copy_from_shard(const float* shard_flat, const shard_layout& layout, arena& whole);

}  // namespace troupe
