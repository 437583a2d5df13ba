// Hands memory the allocator keeps after free() back to the OS. tcmalloc (the peft executable's
// malloc, README "Dependencies") keeps freed spans for reuse, so a loop that frees one large
// float weight per layer and never asks for that size again (quantizing a model layer by layer)
// would otherwise hold every one of them resident.
#pragma once

namespace peft {

/// tcmalloc's MallocExtension_ReleaseFreeMemory when tcmalloc is this process's malloc (looked up
/// with dlsym: no link dependency), glibc's malloc_trim(0) otherwise.
void release_free_memory();

}  // namespace peft
