// Group: a c10d ProcessGroupGloo over a c10d TCPStore, with the join checks (WORLD_SIZE, the
// run's fingerprint), a heartbeat per rank in the store, and failed collectives turned into
// errors that name the rank at fault.
//
// Join protocol (keys under "peft/<restart>/" in the store):
//   claim/<r>  add 1        -> a second process started as the same RANK is an error
//   fp/<r>     the rank's {world_size, config}; each rank compares every arrival with rank 0's
//   abort      a rank's join error, so the others stop waiting and report it too
// Afterwards every rank writes hb/<r> = "<beat> <collectives entered>" once per heartbeat
// interval from a thread with its own store connection. When a collective fails (a peer's
// socket closed, or Gloo's timeout passed), the rank reads the others' heartbeats twice: a beat
// that does not advance is a dead (or stopped) rank; an advancing beat behind in collectives is
// a rank stuck before the collective.
#ifndef USE_C10D_GLOO  // ProcessGroupGloo.hpp declares its class only under this macro (TorchConfig sets it)
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "peft/dist.h"
#include "peft/error.h"

namespace peft::dist {
namespace {

using Clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;
constexpr ms kBeat{500};

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

ms to_ms(double s) { return ms(static_cast<int64_t>(std::llround(s * 1000))); }

bool is_loopback(const std::string& a) { return a == "localhost" || a.rfind("127.", 0) == 0 || a == "::1"; }

std::string where(const Env& e) { return e.master_addr + ":" + std::to_string(e.master_port); }

// A TCPStore client (or, on rank 0 without torchrun's agent store, the server plus a client).
c10::intrusive_ptr<c10d::Store> open_store(const Env& e, bool server, ms timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(e.master_port);
  o.isServer = server;
  o.waitWorkers = false;  // the join below waits, with errors that say who is missing
  o.timeout = timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(e.master_addr, o);
  } catch (const std::exception& ex) {
    std::string m = ex.what();
    m = m.substr(0, m.find("\nException raised from"));
    if (server && (m.find("errno: 98") != std::string::npos || m.find("already in use") != std::string::npos))
      fail("distributed: rank 0 cannot host the c10d store: port ", e.master_port,
           " is already in use (another run, or one that has not exited yet). Choose a free port with "
           "MASTER_PORT=... (torchrun: --master_port; peft train --nproc_per_node: --master_port, or leave it "
           "out for a free one). [", m, "]");
    if (server) fail("distributed: rank 0 cannot host the c10d store on port ", e.master_port, ": ", m);
    fail("distributed: rank ", e.rank, " cannot reach the c10d store at ", where(e), " within ",
         timeout.count() / 1000.0, " s: is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on every rank? [",
         m, "]");
  }
}

}  // namespace

struct Group::Impl {
  Env env;
  GroupOptions opt;
  c10::intrusive_ptr<c10d::Store> tcp, store;  // store = PrefixStore over tcp
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  // Heartbeat.
  c10::intrusive_ptr<c10d::Store> hb_store;
  std::thread hb;
  std::mutex m;
  std::condition_variable cv;
  bool stop = false;
  std::atomic<int64_t> seq{0};  // collectives entered
  bool failed = false;       // something went wrong: never block in the destructor
  bool comm_failed = false;  // a collective failed: the process group may be stuck
  struct Pending {
    c10::intrusive_ptr<c10d::Work> work;
    int64_t seq;
    std::string what;
    Clock::time_point t0;
  };
  std::vector<Pending> pending;  // start_all_reduce_sum's, in launch order

  std::string key(const char* k, int64_t r) const { return std::string(k) + "/" + std::to_string(r); }

  [[noreturn]] void join_error(const std::string& msg) {
    failed = true;
    try {
      if (!store->check({"abort"})) store->set("abort", bytes(msg));
    } catch (...) {
    }
    throw Error(msg);
  }

  // The first rank whose fingerprint differs from rank 0's, as an error message ("" = none).
  std::string mismatch(const nlohmann::json& zero, const nlohmann::json& other, int64_t r) const {
    if (zero.at("world_size") != other.at("world_size"))
      return str_cat("distributed: rank ", r, " was started with WORLD_SIZE=", other.at("world_size").dump(),
                     " but rank 0 with WORLD_SIZE=", zero.at("world_size").dump(),
                     ": every rank needs the same WORLD_SIZE");
    std::string d = first_difference(other.at("config"), zero.at("config"));
    if (d.empty()) return "";
    return str_cat("distributed: rank ", r, " has a different configuration than rank 0: ", d,
                   " (on rank ", r, " vs rank 0). Every rank must run the same recipe, data and method.");
  }

  void join(const nlohmann::json& fp) {
    const int64_t r = env.rank, W = env.world_size;
    const ms timeout = to_ms(opt.timeout_s);
    tcp = open_store(env, r == 0 && !env.agent_store, timeout);
    store = c10::make_intrusive<c10d::PrefixStore>("peft/" + std::to_string(env.restart_count), tcp);
    if (store->add(key("claim", r), 1) > 1)
      join_error(str_cat("distributed: two processes were started as RANK=", r, " (store ", where(env), ")"));
    const nlohmann::json mine = {{"world_size", W}, {"config", fp}};
    store->set(key("fp", r), bytes(mine.dump()));
    std::vector<nlohmann::json> got(static_cast<size_t>(W));
    auto deadline = Clock::now() + timeout;
    for (;;) {
      if (store->check({"abort"})) {
        failed = true;
        throw Error(text(store->get("abort")));
      }
      std::vector<int64_t> missing;
      for (int64_t i = 0; i < W; ++i) {
        auto& g = got[static_cast<size_t>(i)];
        if (g.is_null() && store->check({key("fp", i)})) g = nlohmann::json::parse(text(store->get(key("fp", i))));
        if (g.is_null()) missing.push_back(i);
      }
      if (!got[0].is_null())
        for (int64_t i = 1; i < W; ++i)
          if (!got[static_cast<size_t>(i)].is_null()) {
            std::string e = mismatch(got[0], got[static_cast<size_t>(i)], i);
            if (!e.empty()) join_error(e);
          }
      if (missing.empty()) break;
      if (Clock::now() > deadline) {
        std::string list;
        for (auto i : missing) list += (list.empty() ? "" : ", ") + std::to_string(i);
        join_error(str_cat("distributed: rank", missing.size() > 1 ? "s " : " ", list, " did not join within ",
                           opt.timeout_s, " s (store ", where(env), ", WORLD_SIZE=", W,
                           "): was every rank started, with the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT?"));
      }
      std::this_thread::sleep_for(ms(20));
    }
    auto go = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"))
      go->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (is_loopback(env.master_addr))
      go->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      go->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    try {
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store),
                                                       static_cast<int>(r), static_cast<int>(W), go);
    } catch (const std::exception& e) {
      failed = true;
      fail("distributed: rank ", r, " could not connect to the other ranks (Gloo): ", e.what());
    }
    hb_store = c10::make_intrusive<c10d::PrefixStore>("peft/" + std::to_string(env.restart_count),
                                                      open_store(env, false, timeout));
    hb = std::thread([this] { heartbeat(); });
  }

  void heartbeat() {
    int64_t beat = 0;
    std::unique_lock<std::mutex> lk(m);
    while (!stop) {
      lk.unlock();
      try {
        hb_store->set(key("hb", env.rank), bytes(std::to_string(++beat) + " " + std::to_string(seq.load())));
      } catch (...) {
        return;  // the store is gone; a collective will find out and say so
      }
      lk.lock();
      cv.wait_for(lk, kBeat, [&] { return stop; });
    }
  }

  void stop_heartbeat() {
    {
      std::lock_guard<std::mutex> lk(m);
      stop = true;
    }
    cv.notify_all();
    if (hb.joinable()) hb.join();
  }

  // Why collective #s ("what") failed on this rank: the other ranks' heartbeats, read twice.
  std::string diagnose(int64_t s, const std::string& what, const std::string& cause, double waited) {
    const int64_t W = env.world_size;
    std::vector<std::string> first(static_cast<size_t>(W)), second(static_cast<size_t>(W)), failure(static_cast<size_t>(W));
    std::string findings;
    try {
      store->setTimeout(ms(10000));
      auto read = [&](std::vector<std::string>& into) {
        for (int64_t i = 0; i < W; ++i)
          if (i != env.rank && store->check({key("hb", i)})) into[static_cast<size_t>(i)] = text(store->get(key("hb", i)));
      };
      read(first);
      std::this_thread::sleep_for(kBeat * 3);
      read(second);
      for (int64_t i = 0; i < W; ++i)
        if (i != env.rank && store->check({key("failed", i)})) failure[static_cast<size_t>(i)] = text(store->get(key("failed", i)));
      for (int64_t i = 0; i < W; ++i) {
        if (i == env.rank) continue;
        const size_t k = static_cast<size_t>(i);
        std::string f;
        if (!failure[k].empty()) {
          f = str_cat("rank ", i, " failed: ", failure[k]);
        } else if (first[k] == second[k]) {
          f = str_cat("rank ", i, " is not responding (its heartbeat stopped: the process died, was killed or "
                      "stopped, or its machine is unreachable)");
        } else {
          int64_t other = std::stoll(second[k].substr(second[k].find(' ') + 1));
          if (other < s)
            f = str_cat("rank ", i, " is alive but has not reached this collective (it entered ", other, " of ", s,
                        "): it is stuck or much slower; raise ddp_timeout (", opt.timeout_s, " s) if it is just slow");
        }
        if (!f.empty()) findings += (findings.empty() ? "" : "; ") + f;
      }
    } catch (const std::exception&) {
      findings = env.agent_store ? str_cat("the c10d store at ", where(env), " (torchrun's agent) is unreachable")
                                 : str_cat("rank 0 is gone (the c10d store it hosts at ", where(env),
                                           " is unreachable: it died or was killed)");
    }
    if (findings.empty()) findings = "no other rank reported a problem";
    std::string c = cause.substr(0, cause.find("\nException raised from"));
    return str_cat("distributed: rank ", env.rank, ": collective #", s, " (", what, ") failed after ", waited,
                   " s: ", findings, ". [", c, "]");
  }

  template <class Launch>
  c10::intrusive_ptr<c10d::Work> launch(const std::string& what, int64_t* s, Launch&& fn) {
    *s = ++seq;
    try {
      return fn();
    } catch (const std::exception& e) {
      failed = comm_failed = true;
      throw Error(diagnose(*s, what, e.what(), 0));
    }
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& w, int64_t s, const std::string& what, Clock::time_point t0) {
    try {
      w->wait();
    } catch (const std::exception& e) {
      failed = comm_failed = true;
      double waited = std::chrono::duration<double>(Clock::now() - t0).count();
      throw Error(diagnose(s, what, e.what(), std::round(waited * 10) / 10));
    }
  }
};

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Group::~Group() {
  if (!impl_) return;
  if (impl_->failed || std::uncaught_exceptions() > 0) {
    // A peer is dead or stuck: destroying the process group or joining the heartbeat could
    // block on it. The process is about to exit; leave both to the OS.
    if (impl_->hb.joinable()) impl_->hb.detach();
    (void)impl_.release();
    return;
  }
  impl_->stop_heartbeat();
}

std::shared_ptr<Group> Group::join(const Env& env, const GroupOptions& opt, const nlohmann::json& fingerprint) {
  PEFT_CHECK(env.distributed(), "distributed: Group::join needs WORLD_SIZE > 1");
  PEFT_CHECK(opt.timeout_s > 0, "training option 'ddp_timeout' must be > 0 seconds, got ", opt.timeout_s);
  PEFT_CHECK(opt.backend == "gloo", "training option 'ddp_backend': '", opt.backend,
             "' is not available: this build has the 'gloo' backend (CPU); NCCL needs a LibTorch with CUDA");
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->opt = opt;
  try {
    impl->join(fingerprint);
  } catch (...) {
    if (impl->hb.joinable()) impl->hb.detach();
    (void)impl.release();  // see ~Group
    throw;
  }
  return std::shared_ptr<Group>(new Group(std::move(impl)));
}

int64_t Group::rank() const { return impl_->env.rank; }
int64_t Group::world_size() const { return impl_->env.world_size; }

void Group::all_reduce_sum(std::vector<torch::Tensor> tensors, const std::string& what) {
  auto t0 = Clock::now();
  std::vector<std::pair<c10::intrusive_ptr<c10d::Work>, int64_t>> works;
  for (auto& t : tensors) {
    PEFT_CHECK(t.is_contiguous(), "distributed: all-reduce of a non-contiguous tensor (", what, ")");
    int64_t s = 0;
    auto w = impl_->launch(what, &s, [&] {
      std::vector<at::Tensor> v{t};
      return impl_->pg->allreduce(v);
    });
    works.emplace_back(w, s);
  }
  for (auto& [w, s] : works) impl_->wait(w, s, what, t0);
}

void Group::start_all_reduce_sum(torch::Tensor t, const std::string& what) {
  PEFT_CHECK(t.is_contiguous(), "distributed: all-reduce of a non-contiguous tensor (", what, ")");
  int64_t s = 0;
  auto w = impl_->launch(what, &s, [&] {
    std::vector<at::Tensor> v{t};
    return impl_->pg->allreduce(v);
  });
  impl_->pending.push_back({w, s, what, Clock::now()});
}

void Group::finish_pending() {
  auto pending = std::move(impl_->pending);
  impl_->pending.clear();
  for (auto& p : pending) impl_->wait(p.work, p.seq, p.what, p.t0);
}

void Group::broadcast(torch::Tensor t, int64_t root, const std::string& what) {
  auto t0 = Clock::now();
  int64_t s = 0;
  auto w = impl_->launch(what, &s, [&] {
    std::vector<at::Tensor> v{t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    return impl_->pg->broadcast(v, o);
  });
  impl_->wait(w, s, what, t0);
}

std::string Group::broadcast_string(const std::string& s, int64_t root, const std::string& what) {
  auto n = torch::tensor({static_cast<int64_t>(s.size())}, torch::kInt64);
  broadcast(n, root, what);
  auto buf = torch::zeros({n.item<int64_t>()}, torch::kUInt8);
  if (rank() == root && !s.empty()) std::memcpy(buf.data_ptr(), s.data(), s.size());  // (no null data_ptr to memcpy)
  if (buf.numel() > 0) broadcast(buf, root, what);
  return std::string(reinterpret_cast<const char*>(buf.data_ptr()), static_cast<size_t>(buf.numel()));
}

std::vector<std::string> Group::all_gather_strings(const std::string& s, const std::string& what) {
  const int64_t W = world_size();
  auto t0 = Clock::now();
  auto gather = [&](const torch::Tensor& in) {
    std::vector<std::vector<at::Tensor>> out(1);
    for (int64_t i = 0; i < W; ++i) out[0].push_back(torch::empty_like(in));
    int64_t seq = 0;
    auto w = impl_->launch(what, &seq, [&] {
      std::vector<at::Tensor> v{in};
      return impl_->pg->allgather(out, v);
    });
    impl_->wait(w, seq, what, t0);
    return out[0];
  };
  auto sizes = gather(torch::tensor({static_cast<int64_t>(s.size())}, torch::kInt64));
  int64_t longest = 1;
  for (auto& n : sizes) longest = std::max(longest, n.item<int64_t>());
  auto buf = torch::zeros({longest}, torch::kUInt8);
  std::memcpy(buf.data_ptr(), s.data(), s.size());
  auto all = gather(buf);
  std::vector<std::string> r;
  for (int64_t i = 0; i < W; ++i)
    r.emplace_back(reinterpret_cast<const char*>(all[static_cast<size_t>(i)].data_ptr()),
                   static_cast<size_t>(sizes[static_cast<size_t>(i)].item<int64_t>()));
  return r;
}

void Group::barrier(const std::string& what) {
  // An all-reduce of one number: Gloo's barrier, but through the same checked path.
  all_reduce_sum({torch::zeros({1}, torch::kFloat64)}, what);
}

void Group::report_failure(const std::string& message) noexcept {
  try {
    impl_->failed = true;
    impl_->store->setTimeout(ms(5000));
    impl_->store->set(impl_->key("failed", rank()), bytes(message.substr(0, 2000)));
    if (!impl_->comm_failed && impl_->pg) {
      // This rank failed on its own: closing its connections makes the others' collectives
      // fail now (not after the timeout), and they read the message above. The store's host
      // stays a little longer so that they can.
      impl_->pg.reset();
      if (rank() == 0 && !impl_->env.agent_store) std::this_thread::sleep_for(kBeat * 6);
    }
  } catch (...) {
  }
}

}  // namespace peft::dist
