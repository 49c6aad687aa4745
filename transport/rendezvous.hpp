#pragma once
// Rendezvous: how the ranks of a group find each other before any link exists. A small
// key-value store: set publishes, get waits (up to a deadline) until the key is there.
// memory_rendezvous serves ranks that are threads of one process; file_rendezvous ranks
// that are processes of one host sharing a directory (troupe launch makes one per job).
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>

namespace troupe {

class rendezvous {
 public:
  virtual ~rendezvous() = default;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // The key's value once some rank has set it; transport_error at the deadline, naming
  // the key: "rendezvous: nobody set 'tcp/7/3' within 30000 ms".
  virtual std::string get(const std::string& key, std::chrono::milliseconds deadline) = 0;
};

class memory_rendezvous : public rendezvous {
 public:
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, std::chrono::milliseconds deadline) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
};

// One file per key in `dir` (created if missing), written whole and renamed into place,
// so a reader never sees half a value. Keys may hold letters, digits, '-', '_', '.', '/'
// ('/' becomes '_'); anything else is an input_error.
class file_rendezvous : public rendezvous {
 public:
  explicit file_rendezvous(std::filesystem::path dir);
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, std::chrono::milliseconds deadline) override;

 private:
  std::filesystem::path path_of(const std::string& key) const;
  std::filesystem::path dir_;
};

}  // namespace troupe
