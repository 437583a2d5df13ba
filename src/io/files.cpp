// Plain file helpers: whole-file reads, atomic writes, JSON files.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/files.h"
#include "io/json_parse.h"
#include "peft/error.h"
#include "peft/io.h"

namespace peft {

bool file_exists(const std::string& path) { return std::filesystem::exists(path); }

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return (std::filesystem::path(a) / b).string();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  PEFT_CHECK(f.good(), path, ": cannot open: ", std::strerror(errno));
  try {
    std::ostringstream ss;
    ss << f.rdbuf();
    PEFT_CHECK(!f.bad(), path, ": read error");
    // operator<< swallows an exception while copying (std::bad_alloc included) into badbit on
    // `ss`; an empty file only sets failbit.
    PEFT_CHECK(!ss.bad(), path, ": cannot read it into memory (", std::filesystem::file_size(path), " bytes)");
    return ss.str();
  } catch (const std::bad_alloc&) {
    std::error_code ec;
    fail(path, ": too large to read into memory (", std::filesystem::file_size(path, ec),
         " bytes; files peft reads whole must fit in RAM)");
  }
}

void sync_directory(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  PEFT_CHECK(fd >= 0, dir, ": cannot open the folder to sync it: ", std::strerror(errno));
  int rc = ::fsync(fd), err = errno;
  ::close(fd);
  PEFT_CHECK(rc == 0 || err == EINVAL || err == EROFS, dir, ": cannot sync the folder: ", std::strerror(err));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    PEFT_CHECK(!ec, path, ": cannot create the folder ", p.parent_path().string(), ": ", ec.message());
  }
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  PEFT_CHECK(fd >= 0, path, ": cannot create temporary file ", tmp, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path, ": write failed after ", done, " of ", bytes.size(), " bytes: ", std::strerror(err),
           " (the previous file, if any, is untouched)");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail(path, ": cannot flush: ", std::strerror(err), " (the previous file, if any, is untouched)");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail(path, ": cannot rename temporary file into place: ", std::strerror(err));
  }
  sync_directory(p.has_parent_path() ? p.parent_path().string() : ".");
}

nlohmann::json parse_json_limited(const char* begin, const char* end, const std::string& what) {
  auto depth_guard = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    PEFT_CHECK(depth <= kMaxJsonDepth, what, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
    return true;
  };
  try {
    return nlohmann::json::parse(begin, end, depth_guard);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": invalid JSON: ", e.what());
  }
}

nlohmann::json read_json(const std::string& path) {
  std::string text = read_file(path);
  return parse_json_limited(text.data(), text.data() + text.size(), path);
}

void write_json(const std::string& path, const nlohmann::json& j) { write_file_atomic(path, j.dump(2) + "\n"); }

}  // namespace peft
