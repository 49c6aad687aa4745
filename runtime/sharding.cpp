#include "runtime/sharding.hpp"

#include <algorithm>
#include <cstring>

#include "runtime/check.hpp"

namespace troupe {

int64_t shard_layout::numel() const {
  int64_t n = 0;
  for (const shard_piece& p : pieces) n += p.count;
  return n;
}

std::vector<std::shared_ptr<const shard_layout>> shard_by_size(const param_table& table, int shards) {
  TROUPE_CHECK(shards >= 1, "shards = ", shards);
  int64_t total = 0;
  for (const param_info& e : table.entries()) total += e.numel();
  std::vector<std::shared_ptr<const shard_layout>> out;
  size_t entry = 0;
  int64_t within = 0;  // elements of entries[entry] already given to earlier shards
  for (int s = 0; s < shards; ++s) {
    auto l = std::make_shared<shard_layout>();
    l->index = s;
    int64_t want = (int64_t(s) + 1) * total / shards - int64_t(s) * total / shards;
    while (want > 0) {
      const param_info& e = table.entries()[entry];
      const int64_t take = std::min(want, e.numel() - within);
      shard_piece p;
      p.param = int(entry);
      p.begin = within;
      p.count = take;
      p.shard_entry = l->table.add(e.name + "[" + std::to_string(within) + ":" + std::to_string(within + take) + "]",
                                   {take}, e.decay);
      l->pieces.push_back(p);
      want -= take;
      within += take;
      if (within == e.numel()) ++entry, within = 0;
    }
    out.push_back(std::move(l));
  }
  return out;
}

void copy_into_shard(const arena& whole, const shard_layout& layout, float* shard_flat) {
  for (const shard_piece& p : layout.pieces)
    std::memcpy(shard_flat + layout.table.at(p.shard_entry).offset, whole.ptr(p.param) + p.begin,
                size_t(p.count) * sizeof(float));
}

void copy_from_shard(const float* shard_flat, const shard_layout& layout, arena& whole) {
  for (const shard_piece& p : layout.pieces)
    std::memcpy(whole.ptr(p.param) + p.begin, shard_flat + layout.table.at(p.shard_entry).offset,
                size_t(p.count) * sizeof(float));
}

}  // namespace troupe
