#include "policies/elastic_membership.hpp"

#include <algorithm>
#include <sstream>

#include "runtime/check.hpp"

namespace troupe {

int elastic_view::index_of(int32_t id) const {
  auto it = std::find(members.begin(), members.end(), id);
  return it == members.end() ? -1 : int(it - members.begin());
}

std::string elastic_view::encode() const {
  std::string out = std::to_string(generation);
  for (int32_t m : members) out += " " + std::to_string(m);
  return out;
}

elastic_view elastic_view::decode(const std::string& text) {
  std::istringstream in(text);
  elastic_view v;
  if (!(in >> v.generation) || v.generation < 0)
    throw input_error("elastic view '" + text.substr(0, 80) + "': expected a generation >= 0 first");
  long long id = 0;
  while (in >> id) {
    if (id < 0 || id > 1 << 20) throw input_error("elastic view '" + text.substr(0, 80) + "': member id out of range");
    if (std::find(v.members.begin(), v.members.end(), int32_t(id)) != v.members.end())
      throw input_error("elastic view '" + text.substr(0, 80) + "': member " + std::to_string(id) + " twice");
    v.members.push_back(int32_t(id));
  }
  if (!in.eof()) throw input_error("elastic view '" + text.substr(0, 80) + "': expected member ids (integers)");
  return v;
}

elastic_view view_without(const elastic_view& v, int32_t lost) {
  elastic_view out{v.generation + 1, {}};
  for (int32_t m : v.members)
    if (m != lost) out.members.push_back(m);
  return out;
}

elastic_view view_with(const elastic_view& v, int32_t joined) {
  elastic_view out{v.generation + 1, v.members};
  if (v.index_of(joined) < 0) out.members.push_back(joined);
  return out;
}

elastic_view view_replacing(const elastic_view& v, int32_t lost, int32_t joined) {
  const int at = v.index_of(lost);
  if (at < 0 || v.index_of(joined) >= 0)
    throw input_error("view " + std::to_string(v.generation) + " (" + v.encode() + "): cannot put " +
                      std::to_string(joined) + " in the place of " + std::to_string(lost));
  elastic_view out{v.generation + 1, v.members};
  out.members[size_t(at)] = joined;
  return out;
}

row_share rows_for(int k, int n, int64_t batch, int launched, bool keep) {
  TROUPE_CHECK(n >= 1 && k >= 0 && k < n && launched >= 1, "rows_for: rank ", k, " of ", n, ", launched ", launched);
  if (keep) return {batch * k / n, batch * (k + 1) / n, batch};
  const int64_t each = batch / std::max(n, launched);  // more workers than launched: smaller shares
  return {each * k, each * (k + 1), each * n};
}

bool view_viable(const elastic_view& v, uint32_t min_workers) { return v.members.size() >= size_t(min_workers); }

}  // namespace troupe
