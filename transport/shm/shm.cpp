#include "transport/shm/shm.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/check.hpp"
#include "transport/cpu_relax.hpp"
#include "transport/tcp/handshake.hpp"

namespace troupe {

namespace {

using clock = std::chrono::steady_clock;

constexpr uint64_t kSegmentMagic = 0x31474553504d4854ull;  // "THMPSEG1"
constexpr uint32_t kSlotMagic = 0x544f4c53u;                // "SLOT"
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 4096;
// Setup messages on the tcp group, before any caller's message.
constexpr uint64_t kSetupTag = uint64_t(1) << 62;
constexpr size_t kSetupBytes = 256;
// A wait that saw nothing move for this long (and for its spin) drains the messages nobody
// asked for yet (their senders may be waiting for ring space), then may sleep.
constexpr std::chrono::microseconds kDrainAfter{100};
// How long a wait polls once sleeping has been seen to cost a wake-up (wait_for).
constexpr std::chrono::microseconds kLongSpin{2000};
constexpr uint64_t kMaxMessageBytes = uint64_t(1) << 36;

static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free,
              "shared-memory rings need address-free atomics");

// A futex word the owner sleeps on and peers ring after they publish or free a slot.
struct bell {
  std::atomic<uint32_t> seq{0};
  std::atomic<uint32_t> sleepers{0};
};

struct alignas(64) segment_header {
  uint64_t magic;
  uint32_t version, owner, world, slots;
  uint64_t slot_bytes, group;
  alignas(64) bell doorbell;
};
static_assert(sizeof(segment_header) <= kHeaderBytes);

struct alignas(64) ring_ctl {
  alignas(64) std::atomic<uint64_t> head;  // pieces published by the sender
  alignas(64) std::atomic<uint64_t> tail;  // pieces the receiver is done with
};

struct alignas(64) slot_header {
  uint32_t magic, len;  // len: this piece's bytes
  uint64_t tag, total, offset;  // the message's tag and bytes; where this piece starts
};

void ring(bell& b) {
  b.seq.fetch_add(1, std::memory_order_seq_cst);
  if (b.sleepers.load(std::memory_order_seq_cst) > 0)
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&b.seq), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

void sleep_on(bell& b, uint32_t seen, std::chrono::microseconds at_most) {
  b.sleepers.fetch_add(1, std::memory_order_seq_cst);
  if (b.seq.load(std::memory_order_seq_cst) == seen) {
    timespec ts{time_t(at_most.count() / 1000000), long(at_most.count() % 1000000) * 1000};
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&b.seq), FUTEX_WAIT, seen, &ts, nullptr, 0);
  }
  b.sleepers.fetch_sub(1, std::memory_order_seq_cst);
}

std::string boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

// A mapped segment; unmapped (and, while it is still named, unlinked) at the end.
struct segment {
  std::string name;  // "" once unlinked
  uint8_t* base = nullptr;
  size_t bytes = 0;
  segment() = default;
  segment(const segment&) = delete;
  segment& operator=(const segment&) = delete;
  ~segment() {
    unlink();
    if (base) ::munmap(base, bytes);
  }
  void unlink() {
    if (!name.empty()) ::shm_unlink(name.c_str());
    name.clear();
  }
  segment_header& header() const { return *reinterpret_cast<segment_header*>(base); }
};

size_t ring_bytes(const shm_options& o) { return sizeof(ring_ctl) + o.slots * (sizeof(slot_header) + o.slot_bytes); }
size_t segment_bytes(const shm_options& o, int world) { return kHeaderBytes + size_t(world) * ring_bytes(o); }

struct message {
  std::unique_ptr<uint8_t[]> bytes;
  size_t size = 0;
};

class shm_communicator : public communicator, public std::enable_shared_from_this<shm_communicator> {
 public:
  shm_communicator(std::shared_ptr<communicator> inner, uint64_t group, const shm_options& o)
      : inner_(std::move(inner)), rank_(inner_->rank()), size_(inner_->size()), opt_(o), group_(group),
        peers_(size_t(size_)) {
    if (o.slot_bytes < 64 || o.slot_bytes % 64 != 0 || o.slots < 2)
      throw input_error("shm: slot_bytes must be a positive multiple of 64 and slots at least 2 (got " +
                        std::to_string(o.slot_bytes) + " and " + std::to_string(o.slots) + ")");
    setup();
    int local = 1;
    for (auto& p : peers_) local += p.shm;
    crowded_ = unsigned(local) > std::max(1u, std::thread::hardware_concurrency());
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int shm_peers() const {
    int n = 0;
    for (auto& p : peers_) n += p.shm;
    return n;
  }

  void send(int peer, uint64_t tag, const void* data, size_t count, dtype type) override {
    send_async(peer, tag, data, count, type).wait();
  }

  send_handle send_async(int peer, uint64_t tag, const void* data, size_t count, dtype type) override {
    check_peer(peer, "send to");
    const size_t bytes = count * dtype_size(type);
    if (peer == rank_) {  // to itself: straight into its own mailbox
      message m;
      m.bytes.reset(new uint8_t[bytes ? bytes : 1]);
      if (bytes) std::memcpy(m.bytes.get(), data, bytes);
      m.size = bytes;
      std::lock_guard<std::mutex> lock(mu_);
      mailbox_[{peer, tag}].push_back(std::move(m));
      return {};
    }
    peer_state& ps = peers_[size_t(peer)];
    if (!ps.shm) {
      inner_->deadline = deadline;
      return inner_->send_async(peer, tag, data, count, type);
    }
    auto out = std::make_shared<outgoing>();
    out->tag = tag;
    out->data = static_cast<const uint8_t*>(data);
    out->bytes = bytes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!ps.failed.empty()) throw error("cannot send to rank " + std::to_string(peer) + ": " + ps.failed);
      ps.sends.push_back(out);
      push(peer);
    }
    if (out->done) return {};
    return send_handle([self = shared_from_this(), out, peer] { self->finish_send(peer, out); });
  }

  void recv(int peer, uint64_t tag, void* data, size_t count, dtype type) override {
    receive(peer, tag, static_cast<uint8_t*>(data), count * dtype_size(type), false);
  }

  void recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) override {
    receive(peer, tag, reinterpret_cast<uint8_t*>(data), count * sizeof(float), true);
  }

  void abort(const std::string& why) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (aborted_.empty()) aborted_ = why.empty() ? "aborted" : why;
    }
    inner_->abort(why);
    ring(own().header().doorbell);
    for (auto& p : peers_)
      if (p.shm) ring(*p.out_bell);
  }

  std::string peer_failure(int peer) override {
    check_peer(peer, "ask about");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!aborted_.empty()) return aborted_;
      if (!peers_[size_t(peer)].failed.empty()) return peers_[size_t(peer)].failed;
    }
    return inner_->peer_failure(peer);
  }

  bool has_message(int peer, uint64_t tag) override {
    check_peer(peer, "ask about");
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = mailbox_.find({peer, tag});
      if (it != mailbox_.end() && !it->second.empty()) return true;
    }
    return !peers_[size_t(peer)].shm && inner_->has_message(peer, tag);
  }

 private:
  // A send still going out; the caller's buffer is read until `done`.
  struct outgoing {
    uint64_t tag = 0;
    const uint8_t* data = nullptr;
    size_t bytes = 0, sent = 0;
    bool started = false, done = false;
  };
  // A receive waiting for its message: where it goes, and how much has come.
  struct posted {
    uint64_t tag = 0;
    uint8_t* dest = nullptr;
    size_t bytes = 0, got = 0;
    bool add = false, started = false, done = false;
    std::string error;
  };
  struct peer_state {
    bool shm = false;
    std::unique_ptr<segment> theirs;  // the peer's segment: this rank's ring to it, its bell
    ring_ctl* out = nullptr;
    uint8_t* out_slots = nullptr;
    bell* out_bell = nullptr;
    uint64_t out_head = 0;  // this rank is the only writer of out->head
    ring_ctl* in = nullptr;  // the peer's ring in this rank's segment
    uint8_t* in_slots = nullptr;
    uint64_t in_tail = 0;
    std::deque<std::shared_ptr<outgoing>> sends;  // in order; only the front is under way
    std::deque<posted*> receives;                 // posted, in order
    posted* current = nullptr;                    // the receive the message at the ring's front goes into
    // The message at the front that no receive was posted for: copied into the mailbox
    // (or thrown away, for a receive that gave up or was the wrong size).
    bool draining = false, discard = false;
    uint64_t drain_tag = 0, drain_total = 0, drain_got = 0;
    std::unique_ptr<uint8_t[]> drain_buf;
    std::string failed;  // a bad slot header, or a send that gave up midway: the link is down
  };

  transport_error error(const std::string& what) const {
    return transport_error("shm: rank " + std::to_string(rank_) + " " + what);
  }

  void check_peer(int peer, const char* what) const {
    TROUPE_CHECK(peer >= 0 && peer < size_, what, " rank ", peer, " of ", size_);
  }

  segment& own() { return *own_; }

  slot_header* slot(uint8_t* slots, uint64_t i) const {
    return reinterpret_cast<slot_header*>(slots + (i % opt_.slots) * (sizeof(slot_header) + opt_.slot_bytes));
  }

  // Makes this rank's segment, trades names with every peer over tcp, maps the peers' on
  // this host, agrees pair by pair, unlinks its own once every peer is done with the name.
  void setup() {
    own_ = std::make_unique<segment>();
    const std::string host = boot_id();
    const size_t bytes = segment_bytes(opt_, size_);
    std::string name = "/troupe-" + handshake::random_hex(12);
    const int fd = host.empty() ? -1 : ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd >= 0) {
      own_->name = name;
      if (::ftruncate(fd, off_t(bytes)) == 0) {
        void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
          own_->base = static_cast<uint8_t*>(p);
          own_->bytes = bytes;
        }
      }
      ::close(fd);
    }
    if (!own_->base) {
      if (size_ > 1) log("no shared memory (" + std::string(std::strerror(errno)) + "): every peer over tcp");
      own_->unlink();
      name.clear();
    } else {
      segment_header& h = *new (own_->base) segment_header{};
      h.magic = kSegmentMagic;
      h.version = kVersion;
      h.owner = uint32_t(rank_);
      h.world = uint32_t(size_);
      h.slots = opt_.slots;
      h.slot_bytes = opt_.slot_bytes;
      h.group = group_;
      for (int s = 0; s < size_; ++s) new (own_->base + kHeaderBytes + size_t(s) * ring_bytes(opt_)) ring_ctl{};
    }
    // Round 1: where each rank is ("boot-id name"), round 2: whether it mapped ours.
    std::vector<std::string> where(static_cast<size_t>(size_));
    std::string mine = host + " " + name;
    mine.resize(kSetupBytes, '\0');
    exchange(kSetupTag, mine, where);
    std::vector<std::string> mapped(static_cast<size_t>(size_));
    std::string flags(size_t(size_), '0');
    for (int q = 0; q < size_; ++q) {
      if (q == rank_ || !own_->base) continue;
      const std::string w = where[size_t(q)].c_str();  // up to the padding
      const size_t space = w.find(' ');
      if (space == std::string::npos || w.substr(0, space) != host || space + 1 >= w.size()) continue;
      flags[size_t(q)] = map_peer(q, w.substr(space + 1)) ? '1' : '0';
    }
    std::string said = flags;
    said.resize(kSetupBytes, '\0');
    exchange(kSetupTag + 1, said, mapped);
    own_->unlink();  // every peer has opened it (or given up) by now
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      peer_state& ps = peers_[size_t(q)];
      ps.shm = flags[size_t(q)] == '1' && mapped[size_t(q)].size() > size_t(rank_) && mapped[size_t(q)][size_t(rank_)] == '1';
      if (!ps.shm) {
        ps.theirs.reset();
        continue;
      }
      uint8_t* in = own_->base + kHeaderBytes + size_t(q) * ring_bytes(opt_);
      ps.in = reinterpret_cast<ring_ctl*>(in);
      ps.in_slots = in + sizeof(ring_ctl);
    }
  }

  // Sends `mine` (kSetupBytes) to every peer, receives theirs.
  void exchange(uint64_t tag, const std::string& mine, std::vector<std::string>& theirs) {
    for (int q = 0; q < size_; ++q)
      if (q != rank_) inner_->send(q, tag, mine.data(), kSetupBytes, dtype::u8);
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      theirs[size_t(q)].assign(kSetupBytes, '\0');
      inner_->recv(q, tag, theirs[size_t(q)].data(), kSetupBytes, dtype::u8);
    }
  }

  bool map_peer(int q, const std::string& name) {
    const int fd = ::shm_open(name.c_str(), O_RDWR, 0);
    if (fd < 0) {
      log("cannot open rank " + std::to_string(q) + "'s segment " + name + ": " + std::strerror(errno) + " (tcp to it)");
      return false;
    }
    struct stat st {};
    const size_t bytes = segment_bytes(opt_, size_);
    void* p = MAP_FAILED;
    if (::fstat(fd, &st) == 0 && size_t(st.st_size) == bytes)
      p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
      log("cannot map rank " + std::to_string(q) + "'s segment " + name + " (tcp to it)");
      return false;
    }
    auto seg = std::make_unique<segment>();
    seg->base = static_cast<uint8_t*>(p);
    seg->bytes = bytes;
    const segment_header& h = seg->header();
    if (h.magic != kSegmentMagic || h.version != kVersion || h.owner != uint32_t(q) || h.world != uint32_t(size_) ||
        h.slots != opt_.slots || h.slot_bytes != opt_.slot_bytes || h.group != group_) {
      log("rank " + std::to_string(q) + "'s segment " + name + " has a header that does not match (tcp to it)");
      return false;
    }
    peer_state& ps = peers_[size_t(q)];
    uint8_t* out = seg->base + kHeaderBytes + size_t(rank_) * ring_bytes(opt_);
    ps.out = reinterpret_cast<ring_ctl*>(out);
    ps.out_slots = out + sizeof(ring_ctl);
    ps.out_bell = &seg->header().doorbell;
    ps.theirs = std::move(seg);
    return true;
  }

  void log(const std::string& what) const { std::fprintf(stderr, "shm: rank %d: %s\n", rank_, what.c_str()); }

  // Pieces of the queued sends to `peer` into free slots of its ring. Under mu_.
  bool push(int peer) {
    peer_state& ps = peers_[size_t(peer)];
    if (ps.sends.empty() || !ps.failed.empty()) return false;
    uint64_t tail = ps.out->tail.load(std::memory_order_acquire);
    bool moved = false;
    while (!ps.sends.empty()) {
      if (ps.out_head - tail >= opt_.slots) {
        tail = ps.out->tail.load(std::memory_order_acquire);
        if (ps.out_head - tail >= opt_.slots) break;
      }
      outgoing& o = *ps.sends.front();
      const size_t len = std::min(opt_.slot_bytes, o.bytes - o.sent);
      slot_header* h = slot(ps.out_slots, ps.out_head);
      h->magic = kSlotMagic;
      h->len = uint32_t(len);
      h->tag = o.tag;
      h->total = o.bytes;
      h->offset = o.sent;
      if (len) std::memcpy(reinterpret_cast<uint8_t*>(h + 1), o.data + o.sent, len);
      o.sent += len;
      o.started = true;
      ps.out->head.store(++ps.out_head, std::memory_order_release);
      ring(*ps.out_bell);
      moved = true;
      if (o.sent == o.bytes) {
        o.done = true;
        ps.sends.pop_front();
        completed_ = true;
      }
    }
    return moved;
  }

  // The link to `peer` is unusable: its slots made no sense. Fails its receives.
  void fail_link(int peer, const std::string& why) {
    peer_state& ps = peers_[size_t(peer)];
    if (ps.failed.empty()) {
      ps.failed = why;
      log("closing the link to rank " + std::to_string(peer) + ": " + why);
    }
    for (posted* r : ps.receives) {
      r->error = why;
      r->done = true;
    }
    ps.receives.clear();
    ps.current = nullptr;
    completed_ = true;
  }

  // Pieces from `peer`'s ring into posted receives; with `drain`, also messages nobody
  // asked for yet, into the mailbox. Under mu_.
  bool pull(int peer, bool drain) {
    peer_state& ps = peers_[size_t(peer)];
    if (!ps.failed.empty()) return false;
    const uint64_t head = ps.in->head.load(std::memory_order_acquire);
    bool moved = false;
    while (ps.in_tail < head) {
      const slot_header* h = slot(ps.in_slots, ps.in_tail);
      const uint8_t* piece = reinterpret_cast<const uint8_t*>(h + 1);
      const uint64_t len = h->len, total = h->total, offset = h->offset, tag = h->tag;
      if (h->magic != kSlotMagic || len > opt_.slot_bytes || total > kMaxMessageBytes || offset > total ||
          len > total - offset || (len == 0 && total != 0)) {
        fail_link(peer, "a bad slot (magic " + std::to_string(h->magic) + ", piece " + std::to_string(len) +
                            " bytes at " + std::to_string(offset) + " of " + std::to_string(total) + ")");
        return moved;
      }
      const bool mid = ps.current || ps.draining;
      const uint64_t expect_tag = ps.current ? ps.current->tag : ps.drain_tag;
      const uint64_t expect_at = ps.current ? ps.current->got : ps.drain_got;
      if (mid ? (tag != expect_tag || offset != expect_at) : offset != 0) {
        fail_link(peer, "a slot out of order (tag " + std::to_string(tag) + " at " + std::to_string(offset) + ")");
        return moved;
      }
      if (!mid) {  // a new message: the first receive posted for its tag, or the mailbox
        auto it = std::find_if(ps.receives.begin(), ps.receives.end(), [&](posted* r) { return r->tag == tag; });
        if (it != ps.receives.end() && (*it)->bytes == total) {
          ps.current = *it;
          ps.current->started = true;
        } else if (it != ps.receives.end()) {
          (*it)->error = "expected " + std::to_string((*it)->bytes) + " bytes from rank " + std::to_string(peer) +
                         ", got " + std::to_string(total);
          (*it)->done = true;
          ps.receives.erase(it);
          completed_ = true;
          start_drain(ps, tag, total, true);
        } else if (drain) {
          start_drain(ps, tag, total, false);
        } else {
          break;  // left in the ring until someone asks for it or is stuck
        }
      }
      if (ps.current) {
        posted& r = *ps.current;
        if (r.add) {
          add_into(r.dest + offset, piece, len);
        } else if (len) {
          std::memcpy(r.dest + offset, piece, len);
        }
        r.got += len;
        if (r.got == r.bytes) {
          r.done = true;
          ps.receives.erase(std::find(ps.receives.begin(), ps.receives.end(), &r));
          ps.current = nullptr;
          completed_ = true;
        }
      } else {
        if (!ps.discard && len) std::memcpy(ps.drain_buf.get() + offset, piece, len);
        ps.drain_got += len;
        if (ps.drain_got == ps.drain_total) {
          if (!ps.discard) deliver_drained(peer, ps);
          ps.draining = false;
        }
      }
      ps.in->tail.store(++ps.in_tail, std::memory_order_release);
      moved = true;
    }
    if (moved) ring(*ps.out_bell);  // its sender may be waiting for room
    return moved;
  }

  // A drained message is whole: it goes to the first receive posted for its tag since the
  // drain began, if any, or to the mailbox.
  void deliver_drained(int peer, peer_state& ps) {
    completed_ = true;
    auto it = std::find_if(ps.receives.begin(), ps.receives.end(), [&](posted* r) { return r->tag == ps.drain_tag; });
    if (it == ps.receives.end()) {
      message m;
      m.bytes = std::move(ps.drain_buf);
      m.size = ps.drain_total;
      mailbox_[{peer, ps.drain_tag}].push_back(std::move(m));
      return;
    }
    posted& r = **it;
    ps.receives.erase(it);
    r.done = true;
    if (r.bytes != ps.drain_total) {
      r.error = "expected " + std::to_string(r.bytes) + " bytes from rank " + std::to_string(peer) + ", got " +
                std::to_string(ps.drain_total);
    } else if (r.add) {
      add_into(r.dest, ps.drain_buf.get(), r.bytes);
    } else if (r.bytes) {
      std::memcpy(r.dest, ps.drain_buf.get(), r.bytes);
    }
    ps.drain_buf.reset();
  }

  static void add_into(uint8_t* dest, const uint8_t* src, size_t bytes) {
    float* d = reinterpret_cast<float*>(dest);
    const float* s = reinterpret_cast<const float*>(src);
    for (size_t i = 0, n = bytes / sizeof(float); i < n; ++i) d[i] += s[i];
  }

  void start_drain(peer_state& ps, uint64_t tag, uint64_t total, bool discard) {
    ps.draining = true;
    ps.discard = discard;
    ps.drain_tag = tag;
    ps.drain_total = total;
    ps.drain_got = 0;
    ps.drain_buf.reset(discard ? nullptr : new uint8_t[total ? total : 1]);
  }

  // Moves every shared-memory link along. Under mu_.
  bool progress(bool drain) {
    bool moved = false;
    for (int p = 0; p < size_; ++p) {
      if (!peers_[size_t(p)].shm) continue;
      moved |= push(p);
      moved |= pull(p, drain);
    }
    return moved;
  }

  // Rings this process's own bell if the last progress finished something another thread
  // of it may sleep on.
  void wake_neighbours() {
    if (completed_) {
      completed_ = false;
      ring(own().header().doorbell);
    }
  }

  // Moves the links along until done() (read under mu_); throws on the group's abort, the
  // peer's failure (as the tcp link sees it) or the deadline.
  template <class Done>
  void wait_for(int peer, Done done, const char* what, uint64_t tag) {
    const auto until = clock::now() + deadline;
    bell& b = own().header().doorbell;
    // Polls while pieces move and for `spin` after the last one moved (with more ranks
    // than cores, pausing only for the first 2 us of it and yielding the core between
    // looks after that). Once nothing has moved for kDrainAfter as well, it also drains
    // messages nobody asked for yet (a sender of one may be stuck waiting for room; drained
    // early, they would cost an allocation and a copy when their receive is about to be
    // posted anyway), and if that moves nothing either, sleeps until a peer rings.
    //
    // A peer that sleeps takes tens of microseconds to wake on a VM, and two ranks that
    // wait on each other in turn can settle into sleeping every time: then each wait
    // that a peer's ring ended soon after it slept makes the next waits poll for
    // kLongSpin, until one of those polls runs out (the peer is really busy, sleeping is
    // right). Not with more ranks than cores: the poller would hold a core they need.
    auto moved_at = clock::now(), checked = moved_at;
    bool drained_idle = false;  // the last pass drained and moved nothing
    bool slept = false;
    const auto poll_for =
        std::max<clock::duration>(kDrainAfter, long_spin_.load(std::memory_order_relaxed) && !crowded_ && spin.count() > 0
                                                   ? kLongSpin
                                                   : clock::duration(spin));
    for (;;) {
      const uint32_t seen = b.seq.load(std::memory_order_seq_cst);
      auto now = clock::now();
      const bool stuck = now - moved_at >= poll_for;
      if (stuck && poll_for >= kLongSpin) long_spin_.store(false, std::memory_order_relaxed);
      {
        std::lock_guard<std::mutex> lock(mu_);
        const bool moved = progress(stuck);
        const bool finished = done();
        wake_neighbours();
        if (finished) {
          if (slept && clock::now() - now < std::chrono::microseconds(500)) long_spin_.store(true, std::memory_order_relaxed);
          return;
        }
        if (!aborted_.empty()) throw error("stopped waiting for rank " + std::to_string(peer) + ": " + aborted_);
        const std::string& failed = peers_[size_t(peer)].failed;
        if (!failed.empty()) throw error("cannot " + std::string(what) + " rank " + std::to_string(peer) + ": " + failed);
        if (moved) {
          moved_at = now = clock::now();
          drained_idle = false;
          continue;
        }
        drained_idle = stuck;
      }
      if (now - checked > std::chrono::milliseconds(1)) {
        checked = now;
        std::string f = inner_->peer_failure(peer);
        if (!f.empty()) throw error("cannot " + std::string(what) + " rank " + std::to_string(peer) + ": " + f);
        if (now >= until)
          throw error("waited " + std::to_string(deadline.count()) + " ms to " + what + " rank " +
                      std::to_string(peer) + " (tag " + std::to_string(tag) + ")");
      }
      if (!drained_idle) {
        if (crowded_ && now >= moved_at + std::chrono::microseconds(2)) std::this_thread::yield();
        else for (int i = 0; i < 16; ++i) cpu_relax();
        continue;
      }
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(until - now);
      sleep_on(b, seen, std::clamp(left, std::chrono::microseconds(1), std::chrono::microseconds(10000)));
      slept = true;
    }
  }

  void finish_send(int peer, const std::shared_ptr<outgoing>& out) {
    try {
      wait_for(peer, [&] { return out->done; }, "send to", out->tag);
    } catch (...) {
      // The caller's buffer must not be read after this: take the send off the queue.
      // Half sent, the ring now holds a torn message: the link is done for.
      std::lock_guard<std::mutex> lock(mu_);
      peer_state& ps = peers_[size_t(peer)];
      auto it = std::find(ps.sends.begin(), ps.sends.end(), out);
      if (it != ps.sends.end()) {
        if (out->started && ps.failed.empty()) ps.failed = "a send to it gave up midway";
        ps.sends.erase(it);
      }
      throw;
    }
  }

  void receive(int peer, uint64_t tag, uint8_t* dest, size_t bytes, bool add) {
    check_peer(peer, "recv from");
    peer_state& ps = peers_[size_t(peer)];
    auto from_mailbox = [&]() -> bool {  // under mu_
      auto it = mailbox_.find({peer, tag});
      if (it == mailbox_.end() || it->second.empty()) return false;
      message m = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) mailbox_.erase(it);
      if (m.size != bytes)
        throw error("expected " + std::to_string(bytes) + " bytes from rank " + std::to_string(peer) + ", got " +
                    std::to_string(m.size));
      if (add) {
        add_into(dest, m.bytes.get(), bytes);
      } else if (bytes) {
        std::memcpy(dest, m.bytes.get(), bytes);
      }
      return true;
    };
    if (peer != rank_ && !ps.shm) {
      inner_->deadline = deadline;
      // While sends to shared-memory peers are still queued, they must keep moving: poll.
      const auto until = clock::now() + deadline;
      for (;;) {
        bool queued = false;
        {
          std::lock_guard<std::mutex> lock(mu_);
          progress(true);
          wake_neighbours();
          for (auto& p : peers_) queued |= !p.sends.empty();
        }
        if (!queued || inner_->has_message(peer, tag) || clock::now() >= until) break;
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
      if (add) inner_->recv_reduce_sum(peer, tag, reinterpret_cast<float*>(dest), bytes / sizeof(float));
      else inner_->recv(peer, tag, dest, bytes, dtype::u8);
      return;
    }
    posted r;
    r.tag = tag;
    r.dest = dest;
    r.bytes = bytes;
    r.add = add;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (from_mailbox()) return;
      if (peer == rank_) {
        // Only a send from this rank itself can bring it: wait for another thread's.
      } else {
        ps.receives.push_back(&r);
        progress(false);
        wake_neighbours();
      }
    }
    if (peer == rank_) {
      const auto until = clock::now() + deadline;
      for (;;) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (from_mailbox()) return;
          if (!aborted_.empty()) throw error("stopped waiting for itself: " + aborted_);
        }
        if (clock::now() >= until) throw error("waited " + std::to_string(deadline.count()) + " ms for its own tag " + std::to_string(tag));
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    try {
      wait_for(peer, [&] { return r.done; }, "receive from", tag);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = std::find(ps.receives.begin(), ps.receives.end(), &r);
      if (it != ps.receives.end()) ps.receives.erase(it);
      if (ps.current == &r) {  // the rest of its message is thrown away as it comes
        ps.current = nullptr;
        start_drain(ps, tag, r.bytes, true);
        ps.drain_got = r.got;
      }
      throw;
    }
    if (!r.error.empty()) throw error(r.error);
  }

  std::shared_ptr<communicator> inner_;
  int rank_, size_;
  shm_options opt_;
  uint64_t group_;
  bool crowded_ = false;
  std::atomic<bool> long_spin_{false};  // see wait_for
  std::unique_ptr<segment> own_;
  std::vector<peer_state> peers_;
  std::mutex mu_;  // everything below, and every ring's local end
  std::map<std::pair<int, uint64_t>, std::deque<message>> mailbox_;
  std::string aborted_;
  bool completed_ = false;  // progress finished a send or receive since the last wake_neighbours
};

}  // namespace

std::shared_ptr<communicator> make_shm_communicator(int rank, int size, rendezvous& store, const tcp_options& tcp,
                                                    const shm_options& shm) {
  auto inner = make_tcp_communicator(rank, size, store, tcp);
  return std::make_shared<shm_communicator>(std::move(inner), tcp.group, shm);
}

int shm_peer_count(const communicator& comm) {
  auto* s = dynamic_cast<const shm_communicator*>(&comm);
  return s ? s->shm_peers() : 0;
}

}  // namespace troupe
