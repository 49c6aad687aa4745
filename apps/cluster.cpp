#include "apps/cluster.hpp"

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>  // TLS for the control connections
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "actors/messages.hpp"
#include "runtime/check.hpp"

namespace troupe {

std::chrono::milliseconds control_silence() {
  return env_milliseconds("TROUPE_SILENCE_MS", std::chrono::milliseconds(10000), 100, 3600000);
}

std::chrono::milliseconds join_deadline() {
  return env_milliseconds("TROUPE_CONNECT_MS", std::chrono::milliseconds(60000), 100, 86400000);
}

std::vector<std::string> control_tls::flags() const {
  if (!on) return {};
  if (cert.empty()) return {"--tls"};
  return {"--tls-cert", cert, "--tls-key", key, "--tls-ca", ca};
}

bool take_tls_flag(const std::vector<std::string>& args, size_t& i, control_tls& tls) {
  const std::string& a = args[i];
  if (a == "--tls") {
    tls.on = true;
    return true;
  }
  std::string* into = a == "--tls-cert" ? &tls.cert : a == "--tls-key" ? &tls.key : a == "--tls-ca" ? &tls.ca : nullptr;
  if (!into) return false;
  if (i + 1 >= args.size()) throw input_error(a + " expects a file (PEM)");
  *into = args[++i];
  tls.on = true;
  return true;
}

void check_tls(const control_tls& tls) {
  if (!tls.on || (tls.cert.empty() && tls.key.empty() && tls.ca.empty())) return;
  if (tls.cert.empty() || tls.key.empty() || tls.ca.empty())
    throw input_error("TLS with certificates needs all of --tls-cert (this end's certificate), --tls-key (its key) "
                      "and --tls-ca (the CA that signed every end's certificate); missing: " +
                      std::string(tls.cert.empty() ? "--tls-cert " : "") + (tls.key.empty() ? "--tls-key " : "") +
                      (tls.ca.empty() ? "--tls-ca" : ""));
  for (const auto& [flag, path] : {std::pair{"--tls-cert", tls.cert}, {"--tls-key", tls.key}, {"--tls-ca", tls.ca}})
    if (!std::ifstream(path)) throw input_error(std::string(flag) + " " + path + ": cannot read the file");
  // Load them once here, as CAF will: it throws from its network thread on a bad file
  // (the process aborts), so a bad one must be an input error before it gets there.
  std::unique_ptr<SSL_CTX, void (*)(SSL_CTX*)> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
  if (!ctx) throw input_error("TLS: OpenSSL cannot make a context");
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert.c_str()) != 1)
    throw input_error("--tls-cert " + tls.cert + ": not a PEM certificate (chain) OpenSSL can load");
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key.c_str(), SSL_FILETYPE_PEM) != 1)
    throw input_error("--tls-key " + tls.key +
                      ": not a PEM private key (without a passphrase) OpenSSL can load, or not the key of --tls-cert " +
                      tls.cert);
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    throw input_error("--tls-key " + tls.key + ": not the key of the certificate in --tls-cert " + tls.cert);
  if (SSL_CTX_load_verify_locations(ctx.get(), tls.ca.c_str(), nullptr) != 1)
    throw input_error("--tls-ca " + tls.ca + ": not a PEM CA certificate OpenSSL can load");
  ERR_clear_error();
}

void configure_control_plane(caf::actor_system_config& cfg, std::chrono::milliseconds silence,
                             const control_tls& tls) {
  register_message_types(cfg);
  cfg.load<caf::io::middleman>();
  if (tls.on) {
    cfg.load<caf::openssl::manager>();
    // With all three set both ends verify the other's certificate; with none the key
    // exchange is anonymous.
    cfg.openssl_certificate = tls.cert;
    cfg.openssl_key = tls.key;
    cfg.openssl_cafile = tls.ca;
  }
  const auto heartbeat = std::min<std::chrono::milliseconds>(silence / 4, std::chrono::milliseconds(1000));
  cfg.set("middleman.heartbeat-interval", caf::timespan{heartbeat});
  cfg.set("middleman.connection-timeout", caf::timespan{silence});
  cfg.set("scheduler.max-threads", size_t(2));
  // The shared queue, not work stealing: its idle workers poll (500 tries 50 us apart
  // after every message, ../shared/STACK.md), and the elastic coordinator's poll every
  // 10-20 ms kept them at it: the launcher took a quarter of a core from training on 2
  // cores (measured: 2.1 s of CPU in 8 s; 0.1 s with the shared queue). The control plane
  // needs no microsecond latency.
  cfg.set("scheduler.policy", caf::atom("sharing"));
}

caf::expected<uint16_t> publish_control(caf::actor_system& sys, const caf::actor& whom, const std::string& host,
                                        uint16_t port, const control_tls& tls) {
  if (tls.on) return caf::openssl::publish(whom, port, host.c_str(), true);
  return sys.middleman().publish(whom, port, host.c_str(), true);
}

caf::expected<caf::actor> connect_control(caf::actor_system& sys, const std::string& host, uint16_t port,
                                          const control_tls& tls) {
  if (tls.on) return caf::openssl::remote_actor(sys, host, port);
  return sys.middleman().remote_actor(host, port);
}

}  // namespace troupe
