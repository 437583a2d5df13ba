// LD_PRELOAD fault injector for the write-failure tests (tests/train/write_faults_test.cpp).
//
// Counts the write-side operations a process performs on files whose path starts with
// $PEFT_FAULT_PREFIX — write(), pwrite(), writev(), fwrite(), fflush(), fsync(), fdatasync(),
// rename(), ftruncate() — and makes operation number $PEFT_FAULT_AT (1-based) and every later
// one fail with errno $PEFT_FAULT_ERRNO (default ENOSPC), as a disk that has just filled up.
// PEFT_FAULT_MODE=short makes the first failing write() a short one instead (half of the bytes
// written, the count returned), so the error surfaces on the next call: a disk filling up mid-file.
// $PEFT_FAULT_COUNT_FILE, if set, receives the number of counted operations at exit (the size
// of the matrix) and their kinds, one letter each (w write, f flush / sync, t truncate, r rename). Paths are remembered per descriptor at open()/openat()/fopen() time.
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <string>
#include <unordered_map>

namespace {

std::mutex& mu() {
  static std::mutex m;
  return m;
}
std::unordered_map<int, bool>& tracked() {  // fd -> path has the prefix
  static auto* m = new std::unordered_map<int, bool>();
  return *m;
}
std::atomic<long> counted{0};
std::string& kinds() {  // one letter per counted operation, in order
  static auto* k = new std::string();
  return *k;
}

const char* prefix() {
  static const char* p = getenv("PEFT_FAULT_PREFIX");
  return p;
}
bool matches(const char* path) {
  const char* p = prefix();
  if (!p || !path) return false;
  char buf[4096];
  const char* full = path;
  if (path[0] != '/' && getcwd(buf, sizeof buf)) {  // relative paths: resolve against the cwd
    std::string s = std::string(buf) + "/" + path;
    return s.compare(0, strlen(p), p) == 0;
  }
  return strncmp(full, p, strlen(p)) == 0;
}
void remember(int fd, const char* path) {
  if (fd < 0) return;
  std::lock_guard<std::mutex> g(mu());
  tracked()[fd] = matches(path);
}
bool is_tracked(int fd) {
  std::lock_guard<std::mutex> g(mu());
  auto it = tracked().find(fd);
  return it != tracked().end() && it->second;
}
// True when this counted operation (kind: w write, f flush/sync, t truncate, r rename) must
// fail (errno set).
bool inject(char kind) {
  long n = ++counted;
  {
    std::lock_guard<std::mutex> g(mu());
    kinds().push_back(kind);
  }
  static long at = getenv("PEFT_FAULT_AT") ? atol(getenv("PEFT_FAULT_AT")) : 0;
  if (at <= 0 || n < at) return false;
  static int err = getenv("PEFT_FAULT_ERRNO") ? atoi(getenv("PEFT_FAULT_ERRNO")) : ENOSPC;
  errno = err;
  return true;
}

template <class F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

struct CountAtExit {
  ~CountAtExit() {
    const char* f = getenv("PEFT_FAULT_COUNT_FILE");
    if (!f) return;
    FILE* out = real<FILE* (*)(const char*, const char*)>("fopen")(f, "w");
    if (!out) return;
    fprintf(out, "%ld %s\n", counted.load(), kinds().c_str());
    fclose(out);
  }
} count_at_exit;

}  // namespace

extern "C" {

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  int fd = real<int (*)(const char*, int, ...)>("open")(path, flags, mode);
  remember(fd, path);
  return fd;
}
int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  int fd = real<int (*)(const char*, int, ...)>("open64")(path, flags, mode);
  remember(fd, path);
  return fd;
}
int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  int fd = real<int (*)(int, const char*, int, ...)>("openat")(dirfd, path, flags, mode);
  remember(fd, path);
  return fd;
}
FILE* fopen(const char* path, const char* mode) {
  FILE* f = real<FILE* (*)(const char*, const char*)>("fopen")(path, mode);
  if (f) remember(fileno(f), path);
  return f;
}
FILE* fopen64(const char* path, const char* mode) {
  FILE* f = real<FILE* (*)(const char*, const char*)>("fopen64")(path, mode);
  if (f) remember(fileno(f), path);
  return f;
}

ssize_t write(int fd, const void* buf, size_t n) {
  static bool short_mode = getenv("PEFT_FAULT_MODE") && strcmp(getenv("PEFT_FAULT_MODE"), "short") == 0;
  static std::atomic<bool> shortened{false};
  auto w = real<ssize_t (*)(int, const void*, size_t)>("write");
  if (is_tracked(fd) && inject('w')) {
    if (short_mode && n > 1 && !shortened.exchange(true)) return w(fd, buf, n / 2);
    return -1;
  }
  return w(fd, buf, n);
}
ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
  if (is_tracked(fd) && inject('w')) return -1;
  return real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite64")(fd, buf, n, off);
}
ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  if (is_tracked(fd) && inject('w')) return -1;
  return real<ssize_t (*)(int, const struct iovec*, int)>("writev")(fd, iov, cnt);
}
size_t fwrite(const void* p, size_t size, size_t n, FILE* f) {
  if (f && is_tracked(fileno(f)) && inject('w')) return 0;
  return real<size_t (*)(const void*, size_t, size_t, FILE*)>("fwrite")(p, size, n, f);
}
int fflush(FILE* f) {
  if (f && is_tracked(fileno(f)) && inject('f')) return EOF;
  return real<int (*)(FILE*)>("fflush")(f);
}
int fsync(int fd) {
  if (is_tracked(fd) && inject('f')) return -1;
  return real<int (*)(int)>("fsync")(fd);
}
int fdatasync(int fd) {
  if (is_tracked(fd) && inject('f')) return -1;
  return real<int (*)(int)>("fdatasync")(fd);
}
int ftruncate(int fd, off_t len) {
  if (is_tracked(fd) && inject('t')) return -1;
  return real<int (*)(int, off_t)>("ftruncate")(fd, len);
}
int rename(const char* from, const char* to) {
  if (matches(to) && inject('r')) return -1;
  return real<int (*)(const char*, const char*)>("rename")(from, to);
}

}  // extern "C"
