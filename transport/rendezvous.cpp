#include "transport/rendezvous.hpp"

#include <fstream>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "runtime/check.hpp"
#include "transport/communicator.hpp"

namespace troupe {

namespace {
transport_error nobody_set(const std::string& key, std::chrono::milliseconds deadline) {
  return transport_error("rendezvous: nobody set '" + key + "' within " + std::to_string(deadline.count()) + " ms");
}
}  // namespace

void memory_rendezvous::set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
  }
  cv_.notify_all();
}

std::string memory_rendezvous::get(const std::string& key, std::chrono::milliseconds deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, deadline, [&] { return values_.count(key) > 0; })) throw nobody_set(key, deadline);
  return values_[key];
}

file_rendezvous::file_rendezvous(std::filesystem::path dir) : dir_(std::move(dir)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw input_error("rendezvous: cannot create directory '" + dir_.string() + "': " + ec.message());
}

std::filesystem::path file_rendezvous::path_of(const std::string& key) const {
  if (key.empty()) throw input_error("rendezvous: empty key");
  std::string name;
  for (char c : key) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')
      name += c;
    else if (c == '/')
      name += '_';
    else
      throw input_error("rendezvous: key '" + key + "' has a character other than letters, digits, - _ . /");
  }
  return dir_ / name;
}

void file_rendezvous::set(const std::string& key, const std::string& value) {
  const auto path = path_of(key);
  const auto tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << value;
    if (!out) throw transport_error("rendezvous: cannot write '" + tmp + "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw transport_error("rendezvous: cannot publish '" + path.string() + "': " + ec.message());
}

std::string file_rendezvous::get(const std::string& key, std::chrono::milliseconds deadline) {
  const auto path = path_of(key);
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (auto pause = std::chrono::milliseconds(1);; pause = std::min(pause * 2, std::chrono::milliseconds(50))) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::ostringstream s;
      s << in.rdbuf();
      return s.str();
    }
    if (std::chrono::steady_clock::now() >= until) throw nobody_set(key, deadline);
    std::this_thread::sleep_for(pause);
  }
}

}  // namespace troupe
