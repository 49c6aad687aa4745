// CAF 0.17's OpenSSL module (libcaf_openssl) calls SSL_read / SSL_write / SSL_connect /
// SSL_accept and then SSL_get_error without first emptying the thread's OpenSSL error
// queue, which OpenSSL requires (SSL_get_error(3)). OpenSSL 3 queues an error when a peer
// goes away without a TLS close (a process that exits or is killed), and the middleman
// thread serves every connection: the stale entry makes the next SSL_read of *another*
// connection look failed, and CAF closes that one too. Measured here: with one node agent
// gone, the coordinator's connections to all the others broke within a second. These
// wrappers, in the troupe binary, take the calls (the executable's definitions come first
// for the shared libraries) and clear the queue before the real call.
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace {

template <class F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

int SSL_read(SSL* s, void* buf, int num) {
  static auto f = real<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return f(s, buf, num);
}

int SSL_write(SSL* s, const void* buf, int num) {
  static auto f = real<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return f(s, buf, num);
}

int SSL_connect(SSL* s) {
  static auto f = real<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return f(s);
}

int SSL_accept(SSL* s) {
  static auto f = real<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return f(s);
}

}  // extern "C"
