// Line iteration shared by the JSON Lines / plain-text readers (training data, metric logs).
#pragma once
#include <cstdint>
#include <string>

namespace peft {

/// Calls f(line_number, line) for every line of `bytes` that is not blank (only spaces/tabs),
/// numbering from 1 over all lines; "\n" and "\r\n" endings, the last line may lack one.
/// f returns void; `line` has its ending stripped.
template <class F>
void for_each_nonblank_line(const std::string& bytes, F&& f) {
  size_t pos = 0;
  int64_t line = 0;
  while (pos < bytes.size()) {
    size_t nl = bytes.find('\n', pos);
    if (nl == std::string::npos) nl = bytes.size();
    std::string s = bytes.substr(pos, nl - pos);
    pos = nl + 1;
    ++line;
    if (!s.empty() && s.back() == '\r') s.pop_back();
    if (s.find_first_not_of(" \t") == std::string::npos) continue;
    f(line, s);
  }
}

}  // namespace peft
