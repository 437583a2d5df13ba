// peft::Error: every caller-facing failure (bad file, bad config, bad shape) is thrown as
// peft::Error with what went wrong, where (file, JSON field, tensor) and a hint when known.
//
//   PEFT_CHECK(r > 0, "adapter_config.json: field 'r': must be > 0, got ", r);
//   try { ... } catch (const peft::Error& e) { std::cerr << e.what(); }
//
// Broken internal invariants use TORCH_INTERNAL_ASSERT instead (a bug, not a user error).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace peft {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void cat_into(std::ostringstream&) {}
template <class T, class... Rest>
void cat_into(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  cat_into(os, rest...);
}
}  // namespace detail

/// Concatenates the arguments with operator<< into one string.
template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::cat_into(os, args...);
  return os.str();
}

/// Throws peft::Error built from the arguments.
template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str_cat(args...));
}

/// Runs fn(); a peft::Error or std::exception escaping it is rethrown as peft::Error with
/// `where` (a file path, usually) prepended, so messages name the file they concern.
template <class Fn>
auto with_context(const std::string& where, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    std::string m = e.what();
    if (m.rfind(where, 0) == 0) throw Error(m);  // already prefixed
    throw Error(where + ": " + m);
  }
}

}  // namespace peft

#define PEFT_CHECK(cond, ...)                   \
  do {                                          \
    if (!(cond)) ::peft::fail(__VA_ARGS__);     \
  } while (0)
