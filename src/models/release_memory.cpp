#include "models/release_memory.h"

#include <dlfcn.h>
#include <malloc.h>

namespace peft {

void release_free_memory() {
  using Fn = void (*)();
  static Fn tcmalloc_release = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"));
  if (tcmalloc_release)
    tcmalloc_release();
  else
    malloc_trim(0);
}

}  // namespace peft
