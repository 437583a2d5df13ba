// Env::from_environment: the variables torchrun (and `peft train --nproc_per_node`) set.
#include <cstdlib>
#include <string>

#include "peft/dist.h"
#include "peft/error.h"

namespace peft::dist {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int64_t env_int(const char* name, int64_t dflt, int64_t lo) {
  const char* v = env(name);
  if (!v) return dflt;
  std::string s = v;
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(s, &used);
  } catch (...) {
    used = 0;
  }
  PEFT_CHECK(used == s.size() && used > 0, "distributed: environment variable ", name, "='", s,
             "' is not an integer");
  PEFT_CHECK(x >= lo, "distributed: environment variable ", name, "=", x, " must be >= ", lo);
  return x;
}

}  // namespace

Env Env::from_environment() {
  Env e;
  const bool any = env("RANK") || env("WORLD_SIZE");
  if (!any) return e;
  PEFT_CHECK(env("RANK") && env("WORLD_SIZE"), "distributed: ", env("RANK") ? "RANK" : "WORLD_SIZE",
             " is set but ", env("RANK") ? "WORLD_SIZE" : "RANK",
             " is not (start the ranks with torchrun or `peft train --nproc_per_node N`)");
  e.world_size = env_int("WORLD_SIZE", 1, 1);
  e.rank = env_int("RANK", 0, 0);
  PEFT_CHECK(e.rank < e.world_size, "distributed: RANK=", e.rank, " is not below WORLD_SIZE=", e.world_size);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1);
  if (!e.distributed()) return e;
  PEFT_CHECK(env("MASTER_ADDR") && env("MASTER_PORT"), "distributed: WORLD_SIZE=", e.world_size,
             " needs MASTER_ADDR and MASTER_PORT (the address and port of rank 0's store)");
  e.master_addr = env("MASTER_ADDR");
  e.master_port = env_int("MASTER_PORT", 0, 1);
  PEFT_CHECK(e.master_port <= 65535, "distributed: MASTER_PORT=", e.master_port, " is not a TCP port");
  const char* agent = env("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent && std::string(agent) == "True";
  e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0, 0);
  return e;
}

}  // namespace peft::dist
