#include "runtime/job_spec.hpp"

#include <arpa/inet.h>  // inet_pton: parallel.hosts are addresses

#include "runtime/partition.hpp"

#include <google/protobuf/struct.pb.h>      // google::protobuf::Value: the JSON tree, before the schema
#include <google/protobuf/util/json_util.h>  // JsonStringToMessage

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string_view>
#include <vector>

namespace troupe {

namespace {

namespace pb = google::protobuf;
using detail::cat;

constexpr double inf = std::numeric_limits<double>::infinity();

// Every numeric field's allowed range, by dotted path: the one place the ranges live.
// Both the type check of the raw JSON and the range check of the parsed message quote
// these, so "expected ..." reads the same whichever catches a bad value.
struct numeric_rule {
  std::string_view path;
  bool integer;
  double lo, hi;
  bool lo_open, hi_open;  // true: the bound itself is not allowed
  std::string_view note;  // appended in parentheses
};

const numeric_rule numeric_rules[] = {
    {"model.mlp.widths", true, 1, 65536, false, false, ""},
    {"model.gpt.n_layer", true, 1, 1024, false, false, ""},
    {"model.gpt.n_head", true, 1, 1024, false, false, ""},
    {"model.gpt.d_model", true, 1, 16384, false, false, "a multiple of model.gpt.n_head"},
    {"model.gpt.context", true, 1, 65536, false, false, ""},
    {"model.gpt.vocab", true, 256, 256, false, false, "byte-level: one token per byte value"},
    {"data.val_fraction", false, 0, 1, true, true, ""},
    {"optimizer.sgd.lr", false, 0, inf, true, false, ""},
    {"optimizer.sgd.momentum", false, 0, 1, false, true, ""},
    {"optimizer.sgd.weight_decay", false, 0, inf, false, false, ""},
    {"optimizer.adamw.lr", false, 0, inf, true, false, ""},
    {"optimizer.adamw.beta1", false, 0, 1, false, true, ""},
    {"optimizer.adamw.beta2", false, 0, 1, false, true, ""},
    {"optimizer.adamw.eps", false, 0, inf, true, false, ""},
    {"optimizer.adamw.weight_decay", false, 0, inf, false, false, ""},
    {"optimizer.grad_clip", false, 0, inf, false, false, "0 = off"},
    {"optimizer.warmup_steps", true, 0, inf, false, false, ""},
    {"train.batch_size", true, 1, 1048576, false, false, ""},
    {"train.epochs", true, 1, inf, false, false, ""},
    {"train.steps", true, 1, inf, false, false, ""},
    {"train.seed", true, 0, inf, false, false, ""},
    {"train.threads", true, 0, 256, false, false, "0 = all cores"},
    {"train.log_every", true, 1, inf, false, false, ""},
    {"train.eval_batches", true, 1, inf, false, false, ""},
    {"train.sample_tokens", true, 0, 10000, false, false, ""},
    {"train.checkpoint_every", true, 0, 1000000000, false, false, "0 = no checkpoints"},
    {"train.checkpoint_keep", true, 0, 1000000, false, false, "0 = keep all"},
    {"parallel.stages", true, 1, 64, false, false, ""},
    {"parallel.micro_batches", true, 1, 1048576, false, false, "a divisor of train.batch_size / parallel.replicas"},
    {"parallel.replicas", true, 1, 64, false, false, "data-parallel copies of the pipeline"},
    {"parallel.chunks", true, 2, 16, false, false, "model chunks per stage; interleaved only"},
    {"parallel.devices", true, 0, 4096, false, false, "0 = one per stage actor; else a multiple of parallel.replicas"},
    {"policy.workers", true, 1, 256, false, false, "a divisor of train.batch_size"},
    {"policy.shards", true, 1, 64, false, false, ""},
    {"policy.backup", true, 0, 255, false, false, "fewer than policy.workers"},
    {"policy.k", true, 1, 256, false, false, "at most policy.workers"},
    {"policy.staleness", true, 0, 1000000, false, false, ""},
    {"policy.dc_lambda", false, 0, inf, false, false, ""},
    {"policy.sample_ms", false, 0, 1000, false, false, "0 = real compute only"},
    {"policy.time_limit_s", false, 0, inf, false, false, "0 = no limit"},
    {"policy.stragglers.worker", true, 0, 255, false, false, "less than policy.workers"},
    {"policy.stragglers.slowdown", false, 0, 1000, true, false, ""},
    {"policy.stragglers.exp_delay", false, 0, 1000, false, false, "in nominal steps"},
    {"policy.stragglers.spike_factor", false, 0, 1000, true, false, ""},
    {"policy.stragglers.spike_prob", false, 0, 1, false, false, ""},
    {"policy.stragglers.fail_at_step", true, 0, inf, false, false, ""},
    {"policy.sync_every", true, 1, 1000000, false, false, "inner steps between synchronisations"},
    {"policy.outer_lr", false, 0, inf, true, false, ""},
    {"policy.outer_momentum", false, 0, 1, false, true, ""},
    {"policy.balance_every", true, 0, 1000000, false, false, "0 = equal shares"},
    {"elastic.min_workers", true, 1, 4096, false, false, ""},
    {"elastic.max_workers", true, 0, 4096, false, false, "0 = the processes launched"},
    {"elastic.restarts", true, 0, 1000, false, false, ""},
    {"policy.steal_micro_batches", true, 0, 1048576, false, false,
     "0 = off; else a multiple of policy.workers that divides train.batch_size"},
};

struct choice_rule {
  std::string_view path;
  std::vector<std::string_view> choices;
};

const choice_rule choice_rules[] = {
    {"model.mlp.activation", {"relu", "gelu"}},
    {"data.dataset", {"fashion_mnist", "fortunes"}},
    {"optimizer.lr_schedule", {"constant", "cosine"}},
    {"parallel.schedule", {"gpipe", "1f1b", "interleaved", "zb-h1"}},
    {"parallel.transport", {"shm", "tcp", "ucx"}},
    // "allreduce" is the parallel section's path; the rest are policies/update_rule.hpp's
    // names (a test keeps the two lists in step).
    {"policy.lr_scaling", {"none", "linear", "sqrt"}},
    {"elastic.mode", {"off", "respawn", "restart_all"}},
    {"elastic.batch", {"keep", "shrink"}},
    {"policy.name",
     {"allreduce", "sync", "backup", "k-async", "downpour", "ssp", "staleness-lr", "dc-asgd", "local-sgd", "diloco"}},
};

constexpr std::string_view name_rule = "a non-empty name of letters, digits, '.', '_' and '-' (it names runs/<name>/)";

const numeric_rule* find_numeric(std::string_view path) {
  for (const numeric_rule& r : numeric_rules)
    if (r.path == path) return &r;
  return nullptr;
}

const choice_rule* find_choice(std::string_view path) {
  for (const choice_rule& r : choice_rules)
    if (r.path == path) return &r;
  return nullptr;
}

std::string number_str(double v) {
  char buf[64];
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string expected_numeric(const numeric_rule& r) {
  std::string s;
  const std::string what = r.integer ? "an integer" : "a number";
  if (r.lo == r.hi)
    s = number_str(r.lo);
  else if (r.hi == inf)
    s = cat(what, r.lo_open ? " > " : " >= ", number_str(r.lo));
  else
    s = cat(what, " in ", r.lo_open ? "(" : "[", number_str(r.lo), ", ", number_str(r.hi), r.hi_open ? ")" : "]");
  if (!r.note.empty()) s += cat(" (", r.note, ")");
  return s;
}

std::string expected_choice(const choice_rule& r) {
  std::string s = "one of";
  for (size_t i = 0; i < r.choices.size(); ++i) s += cat(i ? ", \"" : " \"", r.choices[i], "\"");
  return s;
}

// What a field accepts, in words, for error messages.
std::string expected_for(std::string_view path, const pb::FieldDescriptor* f) {
  if (const numeric_rule* r = find_numeric(path)) return expected_numeric(*r);
  if (const choice_rule* r = find_choice(path)) return expected_choice(*r);
  if (path == "name") return std::string(name_rule);
  if (f == nullptr) return "a value";
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING: return "a non-empty string";
    case pb::FieldDescriptor::CPPTYPE_MESSAGE: return "a JSON object";
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: return "a number";
    case pb::FieldDescriptor::CPPTYPE_BOOL: return "true or false";
    default: return "an integer";
  }
}

std::string join_path(const std::string& prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : cat(prefix, ".", name);
}

std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

class checker {
 public:
  explicit checker(const std::string& origin) : origin_(origin) {}

  [[noreturn]] void fail(std::string_view path, const std::string& what) const {
    throw input_error(cat(origin_, ": ", path, ": ", what));
  }

  // --- the JSON tree against the schema: names, shapes and types, with full paths ---

  std::string show(const pb::Value& v) const {
    switch (v.kind_case()) {
      case pb::Value::kNullValue: return "null";
      case pb::Value::kNumberValue: return number_str(v.number_value());
      case pb::Value::kStringValue: return quoted(v.string_value());
      case pb::Value::kBoolValue: return v.bool_value() ? "true" : "false";
      case pb::Value::kStructValue: return "{...}";
      case pb::Value::kListValue: return "[...]";
      default: return "?";
    }
  }

  // prefix: the rule path (policy.stragglers); shown: the path in messages (policy.stragglers[1]).
  void object(const pb::Value& v, const pb::Descriptor* d, const std::string& prefix, std::string shown = {}) const {
    if (shown.empty()) shown = prefix;
    if (v.kind_case() != pb::Value::kStructValue)
      fail(shown.empty() ? "top level" : shown, cat("invalid value ", show(v), ": expected a JSON object { ... }"));
    std::vector<std::string> keys;
    for (const auto& kv : v.struct_value().fields()) keys.push_back(kv.first);
    std::sort(keys.begin(), keys.end());  // report the same error first on every run
    const pb::FieldDescriptor* oneof_seen = nullptr;
    for (const std::string& key : keys) {
      const pb::FieldDescriptor* f = find_field(d, key);
      if (f == nullptr) unknown(d, shown, key);
      const pb::Value& x = v.struct_value().fields().at(key);
      if (x.kind_case() == pb::Value::kNullValue) continue;  // JSON null means unset
      const std::string path = join_path(prefix, f->name());
      const std::string shown_path = join_path(shown, f->name());
      if (f->real_containing_oneof() != nullptr) {
        if (oneof_seen != nullptr)
          fail(shown_path, cat("cannot be set together with ", join_path(shown, oneof_seen->name()),
                               ": set exactly one of ", oneof_names(f->real_containing_oneof(), shown)));
        oneof_seen = f;
      }
      if (f->is_repeated()) {
        if (x.kind_case() != pb::Value::kListValue)
          fail(shown_path, cat("invalid value ", show(x), ": expected a list [ ... ], each element ", expected_for(path, f)));
        const auto& items = x.list_value().values();
        for (int i = 0; i < items.size(); ++i) {
          if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE)
            object(items[i], f->message_type(), path, cat(shown_path, "[", i, "]"));
          else
            scalar(items[i], f, path, cat(shown_path, "[", i, "]"));
        }
      } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        object(x, f->message_type(), path, shown_path);
      } else {
        scalar(x, f, path, shown_path);
      }
    }
  }

  // --- the parsed message: presence, ranges and how fields fit together ---

  void number(std::string_view rule_path, double v, std::string_view shown_path = {}) const {
    const numeric_rule* r = find_numeric(rule_path);
    TROUPE_CHECK(r != nullptr, "no numeric rule for ", rule_path);
    const bool ok = std::isfinite(v) && (r->lo_open ? v > r->lo : v >= r->lo) && (r->hi_open ? v < r->hi : v <= r->hi);
    if (!ok)
      fail(shown_path.empty() ? rule_path : shown_path,
           cat("invalid value ", number_str(v), ": expected ", expected_numeric(*r)));
  }

  void choice(std::string_view path, const std::string& v) const {
    const choice_rule* r = find_choice(path);
    TROUPE_CHECK(r != nullptr, "no choice rule for ", path);
    if (std::find(r->choices.begin(), r->choices.end(), v) == r->choices.end())
      fail(path, cat("invalid value ", quoted(v), ": expected ", expected_choice(*r)));
  }

  void required(bool present, std::string_view path) const {
    if (!present) fail(path, cat("missing: expected ", expected_for(path, nullptr), " (required, no default)"));
  }

  void non_empty(std::string_view path, const std::string& v) const {
    if (v.empty()) fail(path, "invalid value \"\": expected a non-empty string");
  }

 private:
  static const pb::FieldDescriptor* find_field(const pb::Descriptor* d, const std::string& key) {
    if (const pb::FieldDescriptor* f = d->FindFieldByName(key)) return f;
    for (int i = 0; i < d->field_count(); ++i)  // protobuf's JSON also accepts lowerCamelCase
      if (d->field(i)->json_name() == key) return d->field(i);
    return nullptr;
  }

  [[noreturn]] void unknown(const pb::Descriptor* d, const std::string& prefix, const std::string& key) const {
    std::string known, best;
    size_t best_distance = 3;  // suggest only names within two edits
    for (int i = 0; i < d->field_count(); ++i) {
      const std::string& name = d->field(i)->name();
      known += cat(i ? ", " : "", name);
      const size_t dist = edit_distance(key, name);
      if (dist < best_distance) best_distance = dist, best = name;
    }
    fail(join_path(prefix, key), cat("unknown field", best.empty() ? "" : cat(" (did you mean ", quoted(best), "?)"),
                                     "; known fields", prefix.empty() ? "" : cat(" of ", prefix), ": ", known));
  }

  static std::string oneof_names(const pb::OneofDescriptor* o, const std::string& prefix) {
    std::string s;
    for (int i = 0; i < o->field_count(); ++i) s += cat(i ? ", " : "", join_path(prefix, o->field(i)->name()));
    return s;
  }

  [[noreturn]] void bad(const pb::Value& x, const pb::FieldDescriptor* f, const std::string& rule_path,
                        const std::string& path) const {
    fail(path, cat("invalid value ", show(x), ": expected ", expected_for(rule_path, f)));
  }

  void scalar(const pb::Value& x, const pb::FieldDescriptor* f, const std::string& rule_path,
              const std::string& path) const {
    using F = pb::FieldDescriptor;
    switch (f->cpp_type()) {
      case F::CPPTYPE_STRING:
        if (x.kind_case() != pb::Value::kStringValue) bad(x, f, rule_path, path);
        return;
      case F::CPPTYPE_FLOAT:
      case F::CPPTYPE_DOUBLE: {
        // protobuf's JSON also takes numbers as strings ("1e-3", "NaN"); ranges come later.
        if (x.kind_case() == pb::Value::kNumberValue) return;
        if (x.kind_case() == pb::Value::kStringValue) {
          const std::string& s = x.string_value();
          if (s == "NaN" || s == "Infinity" || s == "-Infinity") return;
          double d = 0;
          const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
          if (ec == std::errc() && end == s.data() + s.size() && !s.empty()) return;
        }
        bad(x, f, rule_path, path);
      }
      case F::CPPTYPE_INT32:
      case F::CPPTYPE_INT64:
      case F::CPPTYPE_UINT32:
      case F::CPPTYPE_UINT64: {
        const bool is_unsigned = f->cpp_type() == F::CPPTYPE_UINT32 || f->cpp_type() == F::CPPTYPE_UINT64;
        const bool is_64 = f->cpp_type() == F::CPPTYPE_INT64 || f->cpp_type() == F::CPPTYPE_UINT64;
        // long double holds every int64 and uint64 exactly (64-bit mantissa on x86-64).
        long double v = 0;
        if (x.kind_case() == pb::Value::kNumberValue) {
          const double d = x.number_value();
          if (!std::isfinite(d) || d != std::floor(d)) bad(x, f, rule_path, path);
          v = d;
        } else if (x.kind_case() == pb::Value::kStringValue) {  // "128": protobuf's JSON accepts it
          const std::string& s = x.string_value();
          const char* first = s.data();
          const char* last = s.data() + s.size();
          int64_t i = 0;
          uint64_t u = 0;
          if (auto r = std::from_chars(first, last, i); r.ec == std::errc() && r.ptr == last)
            v = i;
          else if (auto q = std::from_chars(first, last, u); q.ec == std::errc() && q.ptr == last)
            v = u;
          else
            bad(x, f, rule_path, path);
        } else {
          bad(x, f, rule_path, path);
        }
        const long double lo = is_unsigned ? 0.0L : (is_64 ? -0x1p63L : -0x1p31L);
        const long double hi = is_unsigned ? (is_64 ? 0x1p64L : 0x1p32L) : (is_64 ? 0x1p63L : 0x1p31L);
        if (v < lo || v >= hi) bad(x, f, rule_path, path);
        return;
      }
      default:
        return;  // no bool or enum fields in the schema; protobuf checks them if added
    }
  }

  const std::string& origin_;
};

// Checks that depend on which fields the user set, before defaults hide that.
void check_presence(const proto::JobSpec& s, const checker& c) {
  if (!s.has_model()) c.fail("model", "missing: expected exactly one of model.mlp, model.gpt");
  if (s.model().kind_case() == proto::ModelSpec::KIND_NOT_SET)
    c.fail("model", "empty: expected exactly one of model.mlp, model.gpt");
  const bool mlp = s.model().has_mlp();

  c.required(s.data().has_dataset(), "data.dataset");
  c.choice("data.dataset", s.data().dataset());
  const std::string& dataset = s.data().dataset();
  if (mlp && dataset != "fashion_mnist")
    c.fail("data.dataset", cat("invalid value ", quoted(dataset),
                               " for an mlp model: expected \"fashion_mnist\" (mlp classifies images; gpt reads text)"));
  if (!mlp && dataset != "fortunes")
    c.fail("data.dataset", cat("invalid value ", quoted(dataset),
                               " for a gpt model: expected \"fortunes\" (gpt models text; mlp classifies images)"));
  if (dataset == "fashion_mnist" && s.data().has_val_fraction())
    c.fail("data.val_fraction", "only applies to dataset \"fortunes\": fashion_mnist evaluates on its t10k test files");

  if (!s.has_optimizer()) c.fail("optimizer", "missing: expected exactly one of optimizer.sgd, optimizer.adamw");
  switch (s.optimizer().kind_case()) {
    case proto::OptimizerSpec::kSgd:
      c.required(s.optimizer().sgd().has_lr(), "optimizer.sgd.lr");
      if (s.optimizer().sgd().nesterov() && s.optimizer().sgd().momentum() <= 0)
        c.fail("optimizer.sgd.nesterov", "needs optimizer.sgd.momentum > 0 (Nesterov momentum without momentum)");
      break;
    case proto::OptimizerSpec::kAdamw: c.required(s.optimizer().adamw().has_lr(), "optimizer.adamw.lr"); break;
    default: c.fail("optimizer", "no update rule: expected exactly one of optimizer.sgd, optimizer.adamw");
  }

  const proto::TrainSpec& t = s.train();
  c.required(t.has_batch_size(), "train.batch_size");
  if (t.has_epochs() && t.has_steps())
    c.fail("train.epochs", "cannot be set together with train.steps: set exactly one of train.epochs, train.steps");
  if (!t.has_epochs() && !t.has_steps())
    c.fail("train.steps", "missing: expected exactly one of train.epochs, train.steps (an integer >= 1)");
  if (t.has_epochs() && dataset != "fashion_mnist")
    c.fail("train.epochs", cat("only applies to dataset \"fashion_mnist\"; for ", quoted(dataset), " use train.steps"));
  if (t.has_sample_tokens() && mlp) c.fail("train.sample_tokens", "only applies to gpt models");
  if (s.parallel().has_chunks() && s.parallel().schedule() != "interleaved")
    c.fail("parallel.chunks", "only applies to parallel.schedule \"interleaved\"");

  // The policy section: each rule's own knob only with that rule.
  const proto::PolicySpec& pol = s.policy();
  const std::string rule = pol.has_name() ? pol.name() : "allreduce";
  c.choice("policy.name", rule);
  struct knob {
    bool set;
    std::string_view path, rule;
  };
  for (const knob& k : {knob{pol.has_backup(), "policy.backup", "backup"}, knob{pol.has_k(), "policy.k", "k-async"},
                        knob{pol.has_staleness(), "policy.staleness", "ssp"},
                        knob{pol.has_dc_lambda(), "policy.dc_lambda", "dc-asgd"},
                        knob{pol.has_dc_adaptive(), "policy.dc_adaptive", "dc-asgd"}})
    if (k.set && rule != k.rule) c.fail(k.path, cat("only applies to policy.name \"", k.rule, "\""));
  // Local rules: each worker takes policy.sync_every optimizer steps of its own between
  // synchronisations, so it sees its whole gradient and may clip it.
  const bool local = rule == "local-sgd" || rule == "diloco";
  if (pol.has_sync_every() && !local) c.fail("policy.sync_every", "only applies to policy.name \"local-sgd\" or \"diloco\"");
  if (pol.has_lr_scaling()) {
    c.choice("policy.lr_scaling", pol.lr_scaling());
    if (local || rule == "allreduce")
      c.fail("policy.lr_scaling", cat("only applies to the gradient rules (sync, backup, k-async, downpour, ssp, "
                                      "staleness-lr, dc-asgd), not to \"", rule, "\""));
  }
  for (const knob& k : {knob{pol.has_outer_lr(), "policy.outer_lr", "diloco"},
                        knob{pol.has_outer_momentum(), "policy.outer_momentum", "diloco"},
                        knob{pol.has_balance_every(), "policy.balance_every", "sync"},
                        knob{pol.has_steal_micro_batches(), "policy.steal_micro_batches", "sync"}})
    if (k.set && rule != k.rule) c.fail(k.path, cat("only applies to policy.name \"", k.rule, "\""));
  if (rule == "allreduce") {
    const bool any = pol.has_workers() || pol.has_shards() || pol.has_sample_ms() || pol.has_time_limit_s() ||
                     pol.stragglers_size() > 0;
    if (any)
      c.fail("policy.name", "is \"allreduce\" (the parallel section's path), which takes no other policy field: "
                            "name an update rule (sync, backup, k-async, downpour, ssp, staleness-lr, dc-asgd, "
                            "local-sgd, diloco)");
    return;
  }
  if (s.parallel().stages() > 1 || s.parallel().replicas() > 1)
    c.fail("policy.name", cat("\"", rule, "\" trains whole-model workers through parameter shards: "
                              "leave parallel.stages and parallel.replicas at 1 (use policy.workers)"));
  if (s.optimizer().grad_clip() > 0 && !local)
    c.fail("optimizer.grad_clip", cat("global-norm clipping is not available with policy.name \"", rule,
                                      "\" (each shard sees only its slice): expected 0, or a local rule "
                                      "(local-sgd, diloco), whose workers clip their own gradients"));
}

void fill_defaults(proto::JobSpec& s) {
  if (!s.has_name()) s.set_name("job");
  if (s.model().has_mlp()) {
    proto::MlpSpec& m = *s.mutable_model()->mutable_mlp();
    if (!m.has_activation()) m.set_activation("relu");
  } else {
    proto::GptSpec& g = *s.mutable_model()->mutable_gpt();
    if (!g.has_n_layer()) g.set_n_layer(4);
    if (!g.has_n_head()) g.set_n_head(4);
    if (!g.has_d_model()) g.set_d_model(128);
    if (!g.has_context()) g.set_context(128);
    if (!g.has_vocab()) g.set_vocab(256);
  }

  proto::DataSpec& d = *s.mutable_data();
  const bool images = d.dataset() == "fashion_mnist";
  if (!d.has_path()) d.set_path(images ? "/usr/share/datasets/fashion-mnist" : "/usr/share/games/fortunes");
  if (!images && !d.has_val_fraction()) d.set_val_fraction(0.1f);

  proto::OptimizerSpec& o = *s.mutable_optimizer();
  if (o.has_sgd()) {
    proto::SgdSpec& g = *o.mutable_sgd();
    if (!g.has_momentum()) g.set_momentum(0.0f);
    if (!g.has_weight_decay()) g.set_weight_decay(0.0f);
    if (!g.has_nesterov()) g.set_nesterov(false);
  } else {
    proto::AdamWSpec& a = *o.mutable_adamw();
    if (!a.has_beta1()) a.set_beta1(0.9f);
    if (!a.has_beta2()) a.set_beta2(0.999f);
    if (!a.has_eps()) a.set_eps(1e-8f);
    if (!a.has_weight_decay()) a.set_weight_decay(0.01f);
  }
  if (!o.has_grad_clip()) o.set_grad_clip(0.0f);
  if (!o.has_lr_schedule()) o.set_lr_schedule("constant");
  if (!o.has_warmup_steps()) o.set_warmup_steps(0);

  proto::TrainSpec& t = *s.mutable_train();
  if (!t.has_seed()) t.set_seed(1337);
  if (!t.has_threads()) t.set_threads(0);
  if (!t.has_log_every()) t.set_log_every(10);
  if (!t.has_metrics_file()) t.set_metrics_file(cat("runs/", s.name(), "/metrics.jsonl"));
  if (!t.has_checkpoint_dir()) t.set_checkpoint_dir(cat("runs/", s.name(), "/checkpoints"));
  if (!t.has_checkpoint_keep()) t.set_checkpoint_keep(3);
  if (!t.has_eval_batches()) t.set_eval_batches(50);
  if (s.model().has_gpt() && !t.has_sample_tokens()) t.set_sample_tokens(200);

  proto::ParallelSpec& par = *s.mutable_parallel();
  if (!par.has_stages()) par.set_stages(1);
  if (!par.has_replicas()) par.set_replicas(1);
  if (!par.has_micro_batches()) par.set_micro_batches(par.stages() == 1 ? 1 : 2 * par.stages());
  if (!par.has_schedule()) par.set_schedule("1f1b");
  if (par.schedule() == "interleaved" && !par.has_chunks()) par.set_chunks(2);
  if (!par.has_transport()) par.set_transport("shm");

  proto::ElasticSpec& el = *s.mutable_elastic();
  if (!el.has_mode()) el.set_mode("off");
  if (!el.has_min_workers()) el.set_min_workers(1);
  if (!el.has_max_workers()) el.set_max_workers(0);
  if (!el.has_batch()) el.set_batch("keep");
  if (!el.has_respawn()) el.set_respawn(true);
  if (!el.has_restarts()) el.set_restarts(3);

  proto::PolicySpec& pol = *s.mutable_policy();
  if (!pol.has_name()) pol.set_name("allreduce");
  if (pol.name() == "allreduce") return;
  if (!pol.has_workers()) pol.set_workers(2);
  if (!pol.has_shards()) pol.set_shards(1);
  if (pol.name() == "backup" && !pol.has_backup()) pol.set_backup(1);
  if (pol.name() == "k-async" && !pol.has_k()) pol.set_k(std::max(1u, pol.workers() / 2));
  if (pol.name() == "ssp" && !pol.has_staleness()) pol.set_staleness(3);
  if (pol.name() == "dc-asgd" && !pol.has_dc_lambda()) pol.set_dc_lambda(pol.dc_adaptive() ? 2.0f : 0.04f);
  if (pol.name() == "dc-asgd" && !pol.has_dc_adaptive()) pol.set_dc_adaptive(false);
  if (pol.name() == "local-sgd" && !pol.has_sync_every()) pol.set_sync_every(10);
  if (pol.name() == "diloco") {
    if (!pol.has_sync_every()) pol.set_sync_every(50);
    if (!pol.has_outer_lr()) pol.set_outer_lr(0.7f);
    if (!pol.has_outer_momentum()) pol.set_outer_momentum(0.9f);
  }
  if (!pol.has_sample_ms()) pol.set_sample_ms(0.0f);
  if (!pol.has_lr_scaling() && pol.name() != "local-sgd" && pol.name() != "diloco") pol.set_lr_scaling("none");
  if (pol.name() == "sync" && !pol.has_balance_every()) pol.set_balance_every(0);
  if (pol.name() == "sync" && !pol.has_steal_micro_batches()) pol.set_steal_micro_batches(0);
  if (!pol.has_time_limit_s()) pol.set_time_limit_s(0.0f);
}

void check_values(const proto::JobSpec& s, const checker& c) {
  const std::string& name = s.name();
  const bool name_ok = !name.empty() && name[0] != '.' && std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
  });
  if (!name_ok) c.fail("name", cat("invalid value ", quoted(name), ": expected ", name_rule));

  if (s.model().has_mlp()) {
    const proto::MlpSpec& m = s.model().mlp();
    if (m.widths_size() < 2)
      c.fail("model.mlp.widths",
             cat("has ", m.widths_size(), m.widths_size() == 1 ? " entry" : " entries",
                 ": expected at least 2 (inputs, hidden widths..., classes)"));
    for (int i = 0; i < m.widths_size(); ++i) c.number("model.mlp.widths", m.widths(i), cat("model.mlp.widths[", i, "]"));
    if (m.widths(0) != 784)
      c.fail("model.mlp.widths[0]", cat("invalid value ", m.widths(0), ": expected 784 (28x28 Fashion-MNIST pixels)"));
    const int last = m.widths_size() - 1;
    if (m.widths(last) != 10)
      c.fail(cat("model.mlp.widths[", last, "]"),
             cat("invalid value ", m.widths(last), ": expected 10 (Fashion-MNIST classes)"));
    c.choice("model.mlp.activation", m.activation());
  } else {
    const proto::GptSpec& g = s.model().gpt();
    c.number("model.gpt.n_layer", g.n_layer());
    c.number("model.gpt.n_head", g.n_head());
    c.number("model.gpt.d_model", g.d_model());
    if (g.d_model() % g.n_head() != 0)
      c.fail("model.gpt.d_model", cat("invalid value ", g.d_model(), ": expected a multiple of model.gpt.n_head (",
                                      g.n_head(), ")"));
    c.number("model.gpt.context", g.context());
    c.number("model.gpt.vocab", g.vocab());
  }

  c.non_empty("data.path", s.data().path());
  if (s.data().has_val_fraction()) c.number("data.val_fraction", s.data().val_fraction());

  const proto::OptimizerSpec& o = s.optimizer();
  if (o.has_sgd()) {
    c.number("optimizer.sgd.lr", o.sgd().lr());
    c.number("optimizer.sgd.momentum", o.sgd().momentum());
    c.number("optimizer.sgd.weight_decay", o.sgd().weight_decay());
  } else {
    c.number("optimizer.adamw.lr", o.adamw().lr());
    c.number("optimizer.adamw.beta1", o.adamw().beta1());
    c.number("optimizer.adamw.beta2", o.adamw().beta2());
    c.number("optimizer.adamw.eps", o.adamw().eps());
    c.number("optimizer.adamw.weight_decay", o.adamw().weight_decay());
  }
  c.number("optimizer.grad_clip", o.grad_clip());
  c.choice("optimizer.lr_schedule", o.lr_schedule());
  c.number("optimizer.warmup_steps", o.warmup_steps());

  const proto::TrainSpec& t = s.train();
  c.number("train.batch_size", t.batch_size());
  if (t.has_epochs()) c.number("train.epochs", t.epochs());
  if (t.has_steps()) {
    c.number("train.steps", t.steps());
    if (o.warmup_steps() >= t.steps())
      c.fail("optimizer.warmup_steps", cat("invalid value ", o.warmup_steps(),
                                           ": expected fewer than train.steps (", t.steps(), ")"));
  }
  c.number("train.seed", double(t.seed()));
  c.number("train.threads", t.threads());
  c.number("train.log_every", t.log_every());
  c.non_empty("train.metrics_file", t.metrics_file());
  c.number("train.checkpoint_every", t.checkpoint_every());
  c.non_empty("train.checkpoint_dir", t.checkpoint_dir());
  c.number("train.checkpoint_keep", t.checkpoint_keep());
  c.number("train.eval_batches", t.eval_batches());
  if (t.has_sample_tokens()) c.number("train.sample_tokens", t.sample_tokens());

  const proto::ParallelSpec& par = s.parallel();
  c.number("parallel.stages", par.stages());
  c.number("parallel.replicas", par.replicas());
  if (par.has_devices()) {
    c.number("parallel.devices", par.devices());
    try {
      check_placement(int(par.stages()), int(par.replicas()), int(par.devices()));
    } catch (const input_error& e) {
      c.fail("parallel.devices", std::string(e.what()).substr(std::string("parallel.devices: ").size()));
    }
  }
  c.number("parallel.micro_batches", par.micro_batches());
  c.choice("parallel.schedule", par.schedule());
  c.choice("parallel.transport", par.transport());
  if (par.has_chunks()) c.number("parallel.chunks", par.chunks());
  if (par.hosts_size() > 4096)
    c.fail("parallel.hosts", cat("has ", par.hosts_size(), " entries: expected at most 4096 (one per process)"));
  for (int i = 0; i < par.hosts_size(); ++i) {
    const std::string& h = par.hosts(i);
    unsigned char addr[16];
    if (h != "any" && inet_pton(AF_INET, h.c_str(), addr) != 1 && inet_pton(AF_INET6, h.c_str(), addr) != 1)
      c.fail(cat("parallel.hosts[", i, "]"),
             cat("invalid value ", quoted(h), ": expected an IPv4 or IPv6 address (the one the process runs at) or "
                                              "\"any\""));
  }
  if (t.batch_size() % par.replicas() != 0)
    c.fail("parallel.replicas", cat("invalid value ", par.replicas(), ": expected a divisor of train.batch_size (",
                                    t.batch_size(), ")"));
  if ((t.batch_size() / par.replicas()) % par.micro_batches() != 0)
    c.fail("parallel.micro_batches",
           cat("invalid value ", par.micro_batches(), ": expected a divisor of train.batch_size / parallel.replicas (",
               t.batch_size() / par.replicas(), ")"));
  if (par.schedule() == "interleaved" && par.micro_batches() % par.stages() != 0)
    c.fail("parallel.micro_batches", cat("invalid value ", par.micro_batches(),
                                         ": the interleaved schedule needs a multiple of parallel.stages (", par.stages(),
                                         ")"));
  const proto::ElasticSpec& el = s.elastic();
  c.choice("elastic.mode", el.mode());
  c.choice("elastic.batch", el.batch());
  c.number("elastic.min_workers", el.min_workers());
  c.number("elastic.max_workers", el.max_workers());
  c.number("elastic.restarts", el.restarts());
  if (el.max_workers() > 0 && el.max_workers() < el.min_workers())
    c.fail("elastic.max_workers", cat("invalid value ", el.max_workers(), ": expected 0 or at least elastic.min_workers (",
                                      el.min_workers(), ")"));
  if (el.mode() != "off") {

    // A parameter-shard job restarts from its checkpoints, or moves a lost process's shards
    // to their standby copies (actors/ps_job.hpp): both take the synchronous rule.
    if (s.policy().name() != "allreduce" && s.policy().name() != "sync")
      c.fail("elastic.mode", cat("\"", el.mode(), "\" takes the all-reduce path, or a parameter-shard job under ",
                                 "policy.name \"sync\": got policy.name \"", s.policy().name(), "\""));
    if (el.mode() == "restart_all" && t.checkpoint_every() == 0)
      c.fail("elastic.mode", "\"restart_all\" restarts from the last checkpoint: set train.checkpoint_every");
  }
  const proto::PolicySpec& pol = s.policy();
  if (pol.name() != "allreduce") {
    c.number("policy.workers", pol.workers());
    c.number("policy.shards", pol.shards());
    if (t.batch_size() % pol.workers() != 0)
      c.fail("policy.workers", cat("invalid value ", pol.workers(), ": expected a divisor of train.batch_size (",
                                   t.batch_size(), "), which the workers share"));
    if (pol.has_backup()) {
      c.number("policy.backup", pol.backup());
      if (pol.backup() >= pol.workers())
        c.fail("policy.backup", cat("invalid value ", pol.backup(), ": expected fewer than policy.workers (",
                                    pol.workers(), ")"));
    }
    if (pol.has_k()) {
      c.number("policy.k", pol.k());
      if (pol.k() > pol.workers())
        c.fail("policy.k", cat("invalid value ", pol.k(), ": expected at most policy.workers (", pol.workers(), ")"));
    }
    if (pol.has_staleness()) c.number("policy.staleness", pol.staleness());
    if (pol.has_dc_lambda()) c.number("policy.dc_lambda", pol.dc_lambda());
    if (pol.has_sync_every()) c.number("policy.sync_every", pol.sync_every());
    if (pol.has_outer_lr()) c.number("policy.outer_lr", pol.outer_lr());
    if (pol.has_outer_momentum()) c.number("policy.outer_momentum", pol.outer_momentum());
    if (pol.has_balance_every()) c.number("policy.balance_every", pol.balance_every());
    if (pol.steal_micro_batches() > 0) {
      const uint32_t m = pol.steal_micro_batches();
      c.number("policy.steal_micro_batches", m);
      if (m % pol.workers() != 0 || t.batch_size() % m != 0)
        c.fail("policy.steal_micro_batches",
               cat("invalid value ", m, ": expected a multiple of policy.workers (", pol.workers(),
                   ") that divides train.batch_size (", t.batch_size(), ")"));
      if (pol.balance_every() > 0)
        c.fail("policy.steal_micro_batches", "cannot be combined with policy.balance_every: both divide the batch "
                                             "among the workers; choose one");
    }
    c.number("policy.sample_ms", pol.sample_ms());
    c.number("policy.time_limit_s", pol.time_limit_s());
    std::vector<bool> named(pol.workers(), false);
    for (int i = 0; i < pol.stragglers_size(); ++i) {
      const proto::StragglerSpec& g = pol.stragglers(i);
      const std::string at = cat("policy.stragglers[", i, "]");
      if (!g.has_worker()) c.fail(at + ".worker", "missing: expected the worker it applies to (0 to policy.workers - 1)");
      c.number("policy.stragglers.worker", g.worker(), at + ".worker");
      if (g.worker() >= pol.workers())
        c.fail(at + ".worker", cat("invalid value ", g.worker(), ": expected less than policy.workers (", pol.workers(), ")"));
      if (named[g.worker()]) c.fail(at + ".worker", cat("worker ", g.worker(), " is named twice"));
      named[g.worker()] = true;
      if (g.has_slowdown()) c.number("policy.stragglers.slowdown", g.slowdown(), at + ".slowdown");
      if (g.has_exp_delay()) c.number("policy.stragglers.exp_delay", g.exp_delay(), at + ".exp_delay");
      if (g.has_spike_factor()) c.number("policy.stragglers.spike_factor", g.spike_factor(), at + ".spike_factor");
      if (g.has_spike_prob()) c.number("policy.stragglers.spike_prob", g.spike_prob(), at + ".spike_prob");
      if (g.has_fail_at_step()) c.number("policy.stragglers.fail_at_step", g.fail_at_step(), at + ".fail_at_step");
      if ((g.has_slowdown() || g.has_exp_delay() || g.has_spike_factor() || g.has_spike_prob()) && pol.sample_ms() == 0)
        c.fail(at, "slows a worker's emulated compute, but policy.sample_ms is 0 (real compute only): set policy.sample_ms");
    }
  }

  // Every virtual stage needs at least one layer.
  const uint32_t layers = s.model().has_gpt() ? s.model().gpt().n_layer() + 2
                                              : 2 * uint32_t(s.model().mlp().widths_size() - 1);
  const uint32_t pieces = par.stages() * (par.schedule() == "interleaved" ? par.chunks() : 1);
  if (pieces > layers)
    c.fail("parallel.stages", cat("invalid value ", par.stages(), ": the model has ", layers, " layers, too few for ",
                                  pieces, " pipeline pieces (stages", par.schedule() == "interleaved" ? " x chunks" : "",
                                  ")"));
}

}  // namespace

proto::JobSpec parse_job_spec(const std::string& json, const std::string& origin) {
  const checker c(origin);

  // First the bare JSON tree, so that syntax errors say so and unknown fields and wrong
  // types are reported with their full path and what the field accepts.
  pb::Value tree;
  if (pb::util::Status st = pb::util::JsonStringToMessage(json, &tree); !st.ok())
    throw input_error(cat(origin, ": not valid JSON: ", st.message(),
                          " (check for a missing comma, quote or closing brace)"));
  c.object(tree, proto::JobSpec::descriptor(), "");

  // Then the real parse; the checks above should leave protobuf nothing to object to.
  proto::JobSpec spec;
  pb::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  if (pb::util::Status st = pb::util::JsonStringToMessage(json, &spec, options); !st.ok())
    throw input_error(cat(origin, ": ", st.message(), " (see docs/job-spec.md for every field and what it accepts)"));

  check_presence(spec, c);
  fill_defaults(spec);
  check_values(spec, c);
  return spec;
}

proto::JobSpec load_job_spec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw input_error(cat(path, ": cannot read job spec (no such file, or not readable)"));
  std::ostringstream text;
  text << in.rdbuf();
  return parse_job_spec(text.str(), path);
}

std::string describe(const proto::JobSpec& s) {
  std::ostringstream os;
  os << s.name() << ": ";
  if (s.model().has_mlp()) {
    os << "mlp ";
    for (int i = 0; i < s.model().mlp().widths_size(); ++i) os << (i ? "-" : "") << s.model().mlp().widths(i);
    os << " " << s.model().mlp().activation();
  } else {
    const proto::GptSpec& g = s.model().gpt();
    os << "gpt " << g.n_layer() << " layers, " << g.n_head() << " heads, d_model " << g.d_model() << ", context "
       << g.context();
  }
  os << " on " << s.data().dataset() << "; ";
  const proto::OptimizerSpec& o = s.optimizer();
  if (o.has_sgd())
    os << "sgd lr " << number_str(o.sgd().lr()) << " momentum " << number_str(o.sgd().momentum())
       << (o.sgd().nesterov() ? " nesterov" : "");
  else
    os << "adamw lr " << number_str(o.adamw().lr()) << " betas " << number_str(o.adamw().beta1()) << "/"
       << number_str(o.adamw().beta2()) << " wd " << number_str(o.adamw().weight_decay());
  os << ", " << o.lr_schedule();
  if (o.warmup_steps() > 0) os << " after " << o.warmup_steps() << " warmup steps";
  if (o.grad_clip() > 0) os << ", clip " << number_str(o.grad_clip());
  os << "; batch " << s.train().batch_size() << ", ";
  if (s.train().has_epochs())
    os << s.train().epochs() << (s.train().epochs() == 1 ? " epoch" : " epochs");
  else
    os << s.train().steps() << (s.train().steps() == 1 ? " step" : " steps");
  os << ", seed " << s.train().seed();
  if (s.parallel().stages() > 1 || s.parallel().replicas() > 1)
    os << "; " << s.parallel().stages() << " stage" << (s.parallel().stages() == 1 ? "" : "s") << " x "
       << s.parallel().replicas() << " replica" << (s.parallel().replicas() == 1 ? "" : "s") << ", "
       << s.parallel().schedule() << ", " << s.parallel().micro_batches() << " micro-batches";
  return os.str();
}

}  // namespace troupe
