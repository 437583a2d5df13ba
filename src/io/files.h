// File-system helpers private to the library (the public ones are in include/peft/io.h).
#pragma once
#include <string>

namespace peft {

/// fsync()s a directory, so that a rename inside it survives a power loss (POSIX: a rename is
/// durable only once its directory is synced). Errors are ignored where the file system cannot
/// sync directories (EINVAL), reported otherwise.
void sync_directory(const std::string& dir);

}  // namespace peft
