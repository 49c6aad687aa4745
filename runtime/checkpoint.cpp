#include "runtime/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>  // crc32

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace troupe {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'T', 'R', 'P', 'C', 'K', 'P', 'T', '\0'};
constexpr char kEnd[8] = {'T', 'R', 'P', 'C', 'K', 'E', 'N', 'D'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxName = 4096;
constexpr int kMaxRank = 8;

uint32_t crc_of(const uint8_t* p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n > 0) {  // zlib takes uInt lengths
    const uInt step = uInt(std::min<size_t>(n, 1u << 30));
    c = crc32(c, p, step);
    p += step, n -= step;
  }
  return uint32_t(c);
}

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

void put_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}

// Reads from a bounded buffer; every short read is a checkpoint_error naming the place.
class reader {
 public:
  reader(const uint8_t* p, size_t n, const std::string& origin) : p_(p), n_(n), origin_(origin) {}
  template <class T>
  T get(const std::string& what) {
    T v;
    std::memcpy(&v, take(sizeof v, what), sizeof v);
    return v;
  }
  const uint8_t* take(size_t n, const std::string& what) {
    if (n > n_ - at_)
      fail(what + ": needs " + std::to_string(n) + " bytes at offset " + std::to_string(at_) + ", the file has " +
           std::to_string(n_ - at_) + " left (truncated?)");
    const uint8_t* q = p_ + at_;
    at_ += n;
    return q;
  }
  size_t at() const { return at_; }
  size_t left() const { return n_ - at_; }
  const uint8_t* base() const { return p_; }
  [[noreturn]] void fail(const std::string& why) const { throw checkpoint_error(origin_ + ": " + why); }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t at_ = 0;
  std::string origin_;
};

bool valid_shard_name(const std::string& s) {
  if (s.empty() || s.size() > 200 || s == "MANIFEST" || s[0] == '.') return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'; });
}

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%012lld", static_cast<long long>(step));
  return buf;
}

void fsync_path(const fs::path& p, int flags) {
  const int fd = ::open(p.c_str(), flags);
  if (fd < 0) throw checkpoint_error("checkpoint: cannot open " + p.string() + " to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw checkpoint_error("checkpoint: fsync of " + p.string() + " failed: " + std::strerror(errno));
}

std::vector<uint8_t> read_all_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw checkpoint_error(path.string() + ": cannot open the file");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return bytes;
}

// MANIFEST: "troupe checkpoint 1\nstep N\nshard NAME BYTES CRC\n..." (text: a person can read it).
std::string manifest_text(int64_t step, const std::map<std::string, std::vector<uint8_t>>& files) {
  std::ostringstream m;
  m << "troupe checkpoint " << kVersion << "\nstep " << step << "\n";
  for (const auto& [name, bytes] : files) m << "shard " << name << " " << bytes.size() << " " << crc_of(bytes.data(), bytes.size()) << "\n";
  return m.str();
}

}  // namespace

int64_t checkpoint_count(const checkpoint_shard& s, const std::string& key) {
  auto it = s.texts.find(key);
  char* end = nullptr;
  const long long v = it == s.texts.end() ? -1 : std::strtoll(it->second.c_str(), &end, 10);
  if (it == s.texts.end() || it->second.empty() || *end || v < 0)
    throw checkpoint_error("checkpoint: \"" + key + "\" is missing or not a count");
  return v;
}

std::vector<uint8_t> encode_shard(const checkpoint_shard& s) {
  std::vector<uint8_t> out;
  put_bytes(out, kMagic, sizeof kMagic);
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, uint32_t(s.tensors.size() + s.texts.size()));
  auto entry = [&](const std::string& name, uint8_t kind, const auto& body) {
    TROUPE_CHECK(!name.empty() && name.size() <= kMaxName, "checkpoint entry name of ", name.size(), " bytes");
    const size_t start = out.size();
    put<uint32_t>(out, uint32_t(name.size()));
    put_bytes(out, name.data(), name.size());
    put<uint8_t>(out, kind);
    body();
    put<uint32_t>(out, crc_of(out.data() + start, out.size() - start));
  };
  for (const auto& kv : s.tensors) {  // not a structured binding: clang 14 cannot capture one
    const std::string& name = kv.first;
    const tensor& t = kv.second;
    entry(name, 0, [&] {
      TROUPE_CHECK(t.defined(), "checkpoint tensor ", name, " is undefined");
      TROUPE_CHECK(t.shape().size() <= size_t(kMaxRank), "checkpoint tensor ", name, " of rank ", t.shape().size());
      put<uint8_t>(out, uint8_t(t.type()));
      put<uint8_t>(out, uint8_t(t.shape().size()));
      for (int64_t d : t.shape()) put<int64_t>(out, d);
      put<uint64_t>(out, uint64_t(t.bytes()));
      put_bytes(out, t.raw(), t.bytes());
    });
  }
  for (const auto& kv : s.texts) {
    const std::string& text = kv.second;
    entry(kv.first, 1, [&] {
      put<uint64_t>(out, uint64_t(text.size()));
      put_bytes(out, text.data(), text.size());
    });
  }
  put<uint32_t>(out, crc_of(out.data(), out.size()));
  put_bytes(out, kEnd, sizeof kEnd);
  return out;
}

checkpoint_shard parse_shard(const uint8_t* data, size_t size, const std::string& origin) {
  reader r(data, size, origin);
  if (std::memcmp(r.take(sizeof kMagic, "the magic"), kMagic, sizeof kMagic) != 0)
    r.fail("not a troupe checkpoint shard (expected the magic \"TRPCKPT\")");
  const auto version = r.get<uint32_t>("the version");
  if (version != kVersion)
    r.fail("format version " + std::to_string(version) + ", this build reads version " + std::to_string(kVersion));
  const auto entries = r.get<uint32_t>("the entry count");
  // Each entry takes at least 18 bytes: a count past what the file can hold is corrupt.
  if (uint64_t(entries) * 18 > r.left())
    r.fail("the entry count " + std::to_string(entries) + " does not fit in the file's " + std::to_string(size) + " bytes");
  checkpoint_shard s;
  for (uint32_t e = 0; e < entries; ++e) {
    const size_t start = r.at();
    const std::string where = "entry " + std::to_string(e);
    const auto name_bytes = r.get<uint32_t>(where + " name length");
    if (name_bytes == 0 || name_bytes > kMaxName)
      r.fail(where + ": name length " + std::to_string(name_bytes) + ", expected 1.." + std::to_string(kMaxName));
    const auto* np = r.take(name_bytes, where + " name");
    const std::string name(reinterpret_cast<const char*>(np), name_bytes);
    const std::string at = where + " (\"" + name + "\")";
    const auto kind = r.get<uint8_t>(at + " kind");
    tensor t;
    std::string text;
    if (kind == 0) {
      const auto type = r.get<uint8_t>(at + " dtype");
      if (type > uint8_t(dtype::u8)) r.fail(at + ": unknown dtype " + std::to_string(type));
      const auto rank = r.get<uint8_t>(at + " rank");
      if (rank > kMaxRank) r.fail(at + ": rank " + std::to_string(rank) + ", expected at most " + std::to_string(kMaxRank));
      shape_t shape;
      unsigned __int128 n = 1;
      for (int d = 0; d < rank; ++d) {
        const auto dim = r.get<int64_t>(at + " dims");
        if (dim < 0) r.fail(at + ": negative dimension " + std::to_string(dim));
        n *= uint64_t(dim);
        if (n > (unsigned __int128)1 << 40) r.fail(at + ": a shape of more than 2^40 elements");
        shape.push_back(dim);
      }
      const auto bytes = r.get<uint64_t>(at + " payload length");
      const uint64_t want = uint64_t(n) * dtype_size(dtype(type));
      if (bytes != want)
        r.fail(at + ": payload of " + std::to_string(bytes) + " bytes, its shape " + shape_str(shape) + " needs " +
               std::to_string(want));
      const auto* payload = r.take(bytes, at + " payload");
      t = tensor::empty(shape, dtype(type));
      if (bytes) std::memcpy(t.raw(), payload, bytes);
    } else if (kind == 1) {
      const auto bytes = r.get<uint64_t>(at + " text length");
      const auto* payload = r.take(bytes, at + " text");
      text.assign(reinterpret_cast<const char*>(payload), bytes);
    } else {
      r.fail(at + ": unknown kind " + std::to_string(kind) + ", expected 0 (tensor) or 1 (text)");
    }
    const uint32_t crc = crc_of(r.base() + start, r.at() - start);
    if (r.get<uint32_t>(at + " checksum") != crc) r.fail(at + ": checksum mismatch (the entry is corrupt)");
    if (s.tensors.count(name) || s.texts.count(name)) r.fail(at + ": a second entry of this name");
    if (kind == 0)
      s.tensors.emplace(name, std::move(t));
    else
      s.texts.emplace(name, std::move(text));
  }
  const uint32_t whole = crc_of(r.base(), r.at());
  if (r.get<uint32_t>("the file checksum") != whole) r.fail("file checksum mismatch (the file is corrupt)");
  if (std::memcmp(r.take(sizeof kEnd, "the end marker"), kEnd, sizeof kEnd) != 0)
    r.fail("no end marker after the last entry (the file is corrupt)");
  if (r.left() != 0) r.fail(std::to_string(r.left()) + " bytes after the end marker (the file is corrupt)");
  return s;
}

void write_file_atomically(const fs::path& path, const std::vector<uint8_t>& bytes) {
  const fs::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw checkpoint_error("checkpoint: cannot create " + tmp.string() + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw checkpoint_error("checkpoint: cannot write " + tmp.string() + ": " + why);
    }
    done += size_t(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw checkpoint_error("checkpoint: fsync of " + tmp.string() + " failed: " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw checkpoint_error("checkpoint: cannot rename " + tmp.string() + " to " + path.string() + ": " + std::strerror(errno));
  fsync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path(), O_RDONLY | O_DIRECTORY);
}

checkpoint_shard read_shard_file(const fs::path& path) {
  const auto bytes = read_all_bytes(path);
  return parse_shard(bytes.data(), bytes.size(), path.string());
}

fs::path commit_checkpoint(const fs::path& dir, int64_t step, const std::map<std::string, checkpoint_shard>& shards,
                           int keep) {
  if (step < 0) throw checkpoint_error("checkpoint: step " + std::to_string(step) + " is negative");
  std::map<std::string, std::vector<uint8_t>> files;
  for (const auto& [name, s] : shards) {
    if (!valid_shard_name(name))
      throw checkpoint_error("checkpoint: shard name \"" + name + "\": expected letters, digits, '_', '-', '.'");
    files.emplace(name, encode_shard(s));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw checkpoint_error("checkpoint: cannot make " + dir.string() + ": " + ec.message());
  const fs::path version = dir / step_dir_name(step);
  fs::remove_all(version, ec);  // a version of this step without its manifest: an earlier crash
  fs::create_directories(version, ec);
  if (ec) throw checkpoint_error("checkpoint: cannot make " + version.string() + ": " + ec.message());
  for (const auto& [name, bytes] : files) write_file_atomically(version / name, bytes);
  const std::string m = manifest_text(step, files);
  write_file_atomically(version / "MANIFEST", std::vector<uint8_t>(m.begin(), m.end()));  // the commit point
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
  if (keep > 0) {
    std::vector<fs::path> versions;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) versions.push_back(e.path());
    std::sort(versions.begin(), versions.end());
    for (size_t i = 0; i + size_t(keep) < versions.size(); ++i) fs::remove_all(versions[i], ec);
  }
  return version;
}

checkpoint_version load_checkpoint_version(const fs::path& version_dir) {
  fs::path v = version_dir.lexically_normal();
  if (v.filename().empty()) v = v.parent_path();  // "DIR/step-N/"
  const fs::path mpath = v / "MANIFEST";
  if (!fs::exists(mpath)) throw checkpoint_error(v.string() + ": no MANIFEST (the version was never committed)");
  const auto mbytes = read_all_bytes(mpath);
  std::istringstream m(std::string(mbytes.begin(), mbytes.end()));
  std::string word, format;
  int64_t step = -1;
  uint32_t fver = 0;
  if (!(m >> word >> format >> fver) || word != "troupe" || format != "checkpoint" || fver != kVersion)
    throw checkpoint_error(mpath.string() + ": not a troupe checkpoint manifest of version " + std::to_string(kVersion));
  if (!(m >> word >> step) || word != "step" || step < 0)
    throw checkpoint_error(mpath.string() + ": expected \"step N\" on its second line");
  if (v.filename().string() != step_dir_name(step))
    throw checkpoint_error(mpath.string() + ": says step " + std::to_string(step) + " in directory " +
                           v.filename().string());
  checkpoint_version got;
  got.step = step;
  got.dir = v;
  std::string name;
  uint64_t bytes = 0;
  uint32_t crc = 0;
  while (m >> word) {
    if (word != "shard" || !(m >> name >> bytes >> crc) || !valid_shard_name(name))
      throw checkpoint_error(mpath.string() + ": expected lines \"shard NAME BYTES CRC\"");
    const auto file = read_all_bytes(v / name);
    if (file.size() != bytes)
      throw checkpoint_error((v / name).string() + ": " + std::to_string(file.size()) + " bytes, the manifest says " +
                             std::to_string(bytes) + " (torn or truncated)");
    if (crc_of(file.data(), file.size()) != crc)
      throw checkpoint_error((v / name).string() + ": checksum differs from the manifest's (corrupt)");
    got.shards.emplace(name, parse_shard(file.data(), file.size(), (v / name).string()));
  }
  return got;
}

checkpoint_version load_latest_checkpoint(const fs::path& dir) {
  checkpoint_version out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  std::vector<fs::path> versions;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) versions.push_back(e.path());
  std::sort(versions.rbegin(), versions.rend());
  for (const auto& v : versions) {
    try {
      checkpoint_version got = load_checkpoint_version(v);
      got.skipped = std::move(out.skipped);
      return got;
    } catch (const checkpoint_error& e) {
      out.skipped.push_back(e.what());
    }
  }
  return out;
}

checkpoint_writer::checkpoint_writer(fs::path dir, int keep) : dir_(std::move(dir)), keep_(keep) {
  thread_ = std::thread([this] { run(); });
}

checkpoint_writer::~checkpoint_writer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void checkpoint_writer::submit(int64_t step, std::map<std::string, checkpoint_shard> shards) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(step, std::move(shards));
  }
  cv_.notify_all();
}

void checkpoint_writer::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
  if (!error_.empty()) throw checkpoint_error(error_);
}

int64_t checkpoint_writer::last_committed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_;
}

std::map<std::string, checkpoint_shard> checkpoint_writer::reclaim() {
  std::lock_guard<std::mutex> lock(mu_);
  if (spent_.empty()) return {};
  auto out = std::move(spent_.front());
  spent_.pop_front();
  return out;
}

void copy_entry(checkpoint_shard& s, const std::string& name, const tensor& t) {
  auto it = s.tensors.find(name);
  if (it != s.tensors.end() && it->second.shape() == t.shape() && it->second.type() == t.type())
    it->second.copy_from(t);
  else
    s.tensors[name] = t.clone();
}

void checkpoint_writer::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_, with everything written
    auto [step, shards] = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    std::string failed;
    try {
      commit_checkpoint(dir_, step, shards, keep_);
    } catch (const std::exception& e) {
      failed = e.what();
    }
    lock.lock();
    busy_ = false;
    if (spent_.size() < 2) spent_.push_back(std::move(shards));
    if (failed.empty())
      last_ = step;
    else if (error_.empty())
      error_ = failed;
    cv_.notify_all();
  }
}

}  // namespace troupe
