// Golden test: the GPT's logits, loss, every parameter gradient and three AdamW steps
// (through trainer::train_step, grad clipping included) against PyTorch, from the file
// tests/reference/gpt_tiny.ref that tests/reference/make_gpt_reference.py writes (its
// docstring documents the format and how the reference was made).
#include <doctest/doctest.h>
#include <zlib.h>    // crc32: the reference file's checksum

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "runtime/training.hpp"

using namespace troupe;

namespace {

#ifdef TROUPE_SOURCE_DIR
const std::string source_dir = TROUPE_SOURCE_DIR;
#else
const std::string source_dir = ".";
#endif

const std::string ref_path = source_dir + "/tests/reference/gpt_tiny.ref";
constexpr uint16_t ref_version = 1;

static_assert(std::endian::native == std::endian::little, "the reference file is little-endian");

// One tensor of the reference file: f32 data (i32 tensors are converted exactly, they are
// small token ids and dimensions).
struct ref_tensor {
  dtype type = dtype::f32;
  shape_t shape;
  std::vector<float> f;
  std::vector<int32_t> i;
};

struct reference {
  std::map<std::string, ref_tensor> tensors;
  const ref_tensor& at(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) FAIL("reference file " << ref_path << " has no tensor '" << name << "'");
    return it->second;
  }
  int scalar_i(const std::string& name) const {
    const ref_tensor& t = at(name);
    REQUIRE_MESSAGE((t.type == dtype::i32 && t.i.size() == 1), name, " is not an i32 scalar");
    return t.i[0];
  }
  float scalar_f(const std::string& name) const {
    const ref_tensor& t = at(name);
    REQUIRE_MESSAGE((t.type == dtype::f32 && t.f.size() == 1), name, " is not an f32 scalar");
    return t.f[0];
  }
};

// Parses the bytes of a reference file; returns "" or what is wrong with it.
std::string parse_reference(const std::string& bytes, reference& out) {
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (bytes.size() - pos < n) return false;
    std::memcpy(dst, bytes.data() + pos, n);
    pos += n;
    return true;
  };
  if (bytes.size() < 6 + 2 + 4 + 4 || bytes.compare(0, 6, "TRPREF") != 0) return "no TRPREF magic";
  uint32_t stored_crc = 0;
  std::memcpy(&stored_crc, bytes.data() + bytes.size() - 4, 4);
  uint32_t crc = uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), uInt(bytes.size() - 4)));
  if (crc != stored_crc) return "CRC-32 mismatch (file truncated or corrupted)";
  pos = 6;
  uint16_t version = 0;
  uint32_t count = 0;
  take(&version, 2);
  take(&count, 4);
  if (version != ref_version)
    return "format version " + std::to_string(version) + ", this test reads " + std::to_string(ref_version);
  const size_t end = bytes.size() - 4;
  for (uint32_t k = 0; k < count; ++k) {
    uint16_t len = 0;
    uint8_t code = 0, ndim = 0;
    if (!take(&len, 2) || pos + len > end) return "tensor " + std::to_string(k) + ": truncated name";
    std::string name = bytes.substr(pos, len);
    pos += len;
    if (!take(&code, 1) || !take(&ndim, 1) || code > 1) return "tensor '" + name + "': bad dtype";
    ref_tensor t;
    t.type = code == 0 ? dtype::f32 : dtype::i32;
    for (int d = 0; d < ndim; ++d) {
      int64_t dim = 0;
      if (!take(&dim, 8) || dim < 0) return "tensor '" + name + "': bad shape";
      t.shape.push_back(dim);
    }
    size_t n = size_t(numel_of(t.shape));
    if (end - pos < n * 4) return "tensor '" + name + "': data runs past the end";
    if (t.type == dtype::f32) {
      t.f.resize(n);
      take(t.f.data(), n * 4);
    } else {
      t.i.resize(n);
      take(t.i.data(), n * 4);
      t.f.assign(t.i.begin(), t.i.end());
    }
    if (!out.tensors.emplace(name, std::move(t)).second) return "tensor '" + name + "' appears twice";
  }
  if (pos != end) return std::to_string(end - pos) + " bytes after the last tensor";
  return "";
}

// Reads and parses a reference file; returns "" or what is wrong, naming the file.
std::string read_reference(const std::string& path, reference& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return "cannot read " + path;
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string err = parse_reference(bytes, out);
  return err.empty() ? err : path + ": " + err;
}

reference load_reference() {
  reference r;
  std::string err = read_reference(ref_path, r);
  REQUIRE_MESSAGE(err.empty(), err, "; regenerate it with /usr/bin/python3 tests/reference/make_gpt_reference.py");
  return r;
}

// Norm-wise relative error ||a - b|| / max(||b||, tiny), and the largest elementwise gap.
struct tensor_error {
  double rel = 0, max_abs = 0;
  int64_t max_at = 0;
};

tensor_error compare(const float* a, const std::vector<float>& b) {
  tensor_error e;
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    double d = double(a[i]) - double(b[i]);
    diff2 += d * d;
    ref2 += double(b[i]) * double(b[i]);
    if (!(std::fabs(d) <= e.max_abs)) {  // NaN lands here too
      e.max_abs = std::fabs(d);
      e.max_at = int64_t(i);
    }
  }
  e.rel = std::sqrt(diff2) / std::max(std::sqrt(ref2), 1e-30);
  if (std::isnan(e.max_abs)) e.rel = INFINITY;
  return e;
}

// Compares one tensor, fails naming it, and keeps the largest error of its category.
void check_close(const std::string& what, const float* actual, const shape_t& actual_shape, const ref_tensor& expected,
                 double tol, double& category_max) {
  CHECK_MESSAGE(actual_shape == expected.shape, what, ": shape ", shape_str(actual_shape), ", reference ",
                shape_str(expected.shape));
  if (actual_shape != expected.shape) return;
  tensor_error e = compare(actual, expected.f);
  category_max = std::max(category_max, e.rel);
  CHECK_MESSAGE(e.rel <= tol, what, ": relative error ", e.rel, " (tolerance ", tol, ")", "; max |diff| ", e.max_abs,
                " at flat index ", e.max_at, " (got ", actual[e.max_at], ", reference ", expected.f[size_t(e.max_at)],
                ")");
}

// Every table entry has a reference tensor `prefix + name` of the same shape and the
// reference has no `prefix` tensor the table lacks.
void check_names_match(const reference& ref, const param_table& table, const std::string& prefix) {
  for (const auto& p : table.entries()) {
    auto it = ref.tensors.find(prefix + p.name);
    CHECK_MESSAGE(it != ref.tensors.end(), "reference has no ", prefix, p.name);
    if (it != ref.tensors.end())
      CHECK_MESSAGE(it->second.shape == p.shape, prefix, p.name, ": table shape ", shape_str(p.shape),
                    ", reference ", shape_str(it->second.shape));
  }
  for (const auto& [name, t] : ref.tensors)
    if (name.rfind(prefix, 0) == 0)
      CHECK_MESSAGE(table.find(name.substr(prefix.size())) >= 0, "reference tensor ", name,
                    " has no parameter in the model's table");
}

tensor i32_tensor(const ref_tensor& t) {
  REQUIRE(t.type == dtype::i32);
  tensor out = tensor::empty(t.shape, dtype::i32);
  std::copy(t.i.begin(), t.i.end(), out.i32());
  return out;
}

// The fused q|k|v bias. Its key part has a zero gradient in exact arithmetic: adding a
// key bias b_k adds q.b_k to every score of a row, which softmax ignores.
bool is_qkv_bias(const std::string& name) {
  const std::string suffix = "attn.c_attn.bias";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Elements [begin, begin + n) of a 1-D reference tensor.
ref_tensor slice(const ref_tensor& t, int64_t begin, int64_t n) {
  ref_tensor s;
  s.shape = {n};
  s.f.assign(t.f.begin() + begin, t.f.begin() + begin + n);
  return s;
}

// Tolerance of every comparison below: the reference is float32 PyTorch; the two sides
// differ only in summation order, which for these sizes moves results by ~1e-6 relative.
constexpr double tol = 1e-4;

}  // namespace

TEST_CASE("golden reference: a corrupted or missing file is a clear error") {
  reference missing;
  CHECK(read_reference(ref_path + ".absent", missing) == "cannot read " + ref_path + ".absent");

  std::ifstream in(ref_path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read ", ref_path,
                  "; regenerate it with /usr/bin/python3 tests/reference/make_gpt_reference.py");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  reference r;
  CHECK(parse_reference(bytes, r) == "");

  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  reference r2;
  CHECK(parse_reference(flipped, r2).find("CRC-32 mismatch") != std::string::npos);
  reference r3;
  CHECK(parse_reference(bytes.substr(0, bytes.size() / 3), r3).find("CRC-32 mismatch") != std::string::npos);
  reference r4;
  CHECK(parse_reference("not a reference file", r4) == "no TRPREF magic");
}

TEST_CASE("golden: GPT logits, loss, gradients and AdamW steps match PyTorch") {
  const reference ref = load_reference();

  proto::JobSpec spec;
  auto* gpt = spec.mutable_model()->mutable_gpt();
  gpt->set_n_layer(uint32_t(ref.scalar_i("config.n_layer")));
  gpt->set_n_head(uint32_t(ref.scalar_i("config.n_head")));
  gpt->set_d_model(uint32_t(ref.scalar_i("config.d_model")));
  gpt->set_context(uint32_t(ref.scalar_i("config.context")));
  gpt->set_vocab(uint32_t(ref.scalar_i("config.vocab")));
  auto* opt = spec.mutable_optimizer();
  auto* adamw = opt->mutable_adamw();
  adamw->set_lr(ref.scalar_f("optim.lr"));
  adamw->set_beta1(ref.scalar_f("optim.beta1"));
  adamw->set_beta2(ref.scalar_f("optim.beta2"));
  adamw->set_eps(ref.scalar_f("optim.eps"));
  adamw->set_weight_decay(ref.scalar_f("optim.weight_decay"));
  opt->set_grad_clip(ref.scalar_f("optim.grad_clip"));
  opt->set_lr_schedule("constant");
  opt->set_warmup_steps(0);
  const int steps = ref.scalar_i("optim.steps");
  spec.mutable_train()->set_batch_size(uint32_t(ref.scalar_i("config.batch")));
  spec.mutable_train()->set_steps(uint32_t(steps));
  spec.mutable_train()->set_seed(1);  // init_params' values are all overwritten below
  spec.mutable_train()->set_threads(1);

  trainer tr(spec, steps);
  const model& net = tr.net();
  const param_table& table = net.table;

  // Parameters by name, both ways.
  check_names_match(ref, table, "param.");
  check_names_match(ref, table, "grad.");
  check_names_match(ref, table, "final.");
  for (const auto& p : table.entries())
    REQUIRE_MESSAGE(ref.tensors.count("param." + p.name), "reference lacks param.", p.name);
  for (int i = 0; i < int(table.entries().size()); ++i) {
    const param_info& p = table.at(i);
    const ref_tensor& t = ref.at("param." + p.name);
    REQUIRE_MESSAGE(t.shape == p.shape, p.name, ": table ", shape_str(p.shape), ", reference ", shape_str(t.shape));
    std::copy(t.f.begin(), t.f.end(), tr.params().ptr(i));
  }

  const tensor x = i32_tensor(ref.at("inputs"));
  const tensor y = i32_tensor(ref.at("targets"));
  const int64_t B = ref.scalar_i("config.batch"), T = ref.scalar_i("config.seq"), V = ref.scalar_i("config.vocab");
  REQUIRE(x.shape() == shape_t{B, T});
  REQUIRE(y.shape() == shape_t{B, T});

  double max_logits = 0, max_loss = 0, max_grad = 0, max_step_loss = 0, max_grad_norm = 0, max_final = 0;

  // Logits through the inference path.
  tensor logits = infer(net, tr.params(), x);
  REQUIRE(logits.shape() == shape_t{B, T, V});
  check_close("logits", logits.f32(), logits.shape(), ref.at("logits"), tol, max_logits);

  // Loss and gradients through forward / backward.
  tr.grads().zero();
  activations acts;
  tensor loss = forward(net, tr.params(), x, y, acts);
  REQUIRE(loss.numel() == 1);
  check_close("loss", loss.f32(), {}, ref.at("loss"), tol, max_loss);
  tensor dloss = tensor::empty({1});
  dloss.f32()[0] = 1.f;
  backward(net, tr.params(), tr.grads(), dloss, acts);
  for (int i = 0; i < int(table.entries().size()); ++i) {
    const param_info& p = table.at(i);
    check_close("grad." + p.name, tr.grads().ptr(i), p.shape, ref.at("grad." + p.name), tol, max_grad);
    if (is_qkv_bias(p.name)) {
      const int64_t C = p.shape[0] / 3;
      const float* g = tr.grads().ptr(i) + C;
      double largest = 0;
      for (int64_t j = 0; j < C; ++j) largest = std::max(largest, double(std::fabs(g[j])));
      CHECK_MESSAGE(largest <= 1e-6, "grad.", p.name, " [k]: ", largest, ", should be zero up to rounding");
    }
  }

  // The optimizer steps through the real training path: zero, forward, backward, clip,
  // AdamW. The reference's grad clip triggers on some steps and not on others.
  const ref_tensor& step_loss = ref.at("step.loss");
  const ref_tensor& step_norm = ref.at("step.grad_norm");
  REQUIRE(step_loss.f.size() == size_t(steps));
  REQUIRE(step_norm.f.size() == size_t(steps));
  for (int s = 0; s < steps; ++s) {
    step_result r = tr.train_step(x, y);
    ref_tensor want_loss{dtype::f32, {}, {step_loss.f[size_t(s)]}, {}};
    ref_tensor want_norm{dtype::f32, {}, {step_norm.f[size_t(s)]}, {}};
    check_close("step " + std::to_string(s) + " loss", &r.loss, {}, want_loss, tol, max_step_loss);
    check_close("step " + std::to_string(s) + " grad norm", &r.grad_norm, {}, want_norm, tol, max_grad_norm);
  }
  const float lr = ref.scalar_f("optim.lr");
  for (int i = 0; i < int(table.entries().size()); ++i) {
    const param_info& p = table.at(i);
    const ref_tensor& want = ref.at("final." + p.name);
    if (!is_qkv_bias(p.name)) {
      check_close("final." + p.name, tr.params().ptr(i), p.shape, want, tol, max_final);
      continue;
    }
    // The key bias's gradient is zero up to rounding (see is_qkv_bias), ~1e-8 on both
    // sides and so comparable to eps: AdamW turns that noise into steps of up to about lr
    // with arbitrary signs, on each side independently. Only q and v can be compared
    // tightly; each key bias element may differ by at most 2 lr per step.
    const int64_t C = p.shape[0] / 3;
    const float* got = tr.params().ptr(i);
    check_close("final." + p.name + " [q]", got, {C}, slice(want, 0, C), tol, max_final);
    check_close("final." + p.name + " [v]", got + 2 * C, {C}, slice(want, 2 * C, C), tol, max_final);
    tensor_error e = compare(got + C, slice(want, C, C).f);
    CHECK_MESSAGE(e.max_abs <= 2.0 * lr * steps, "final.", p.name, " [k]: max |diff| ", e.max_abs, " at ", e.max_at,
                  ", more than the 2 lr per step that AdamW on a zero gradient allows");
  }

  MESSAGE("max relative error vs PyTorch: logits ", max_logits, ", loss ", max_loss, ", grads ", max_grad,
          ", step losses ", max_step_loss, ", grad norms ", max_grad_norm, ", params after ", steps, " steps ",
          max_final);
}
