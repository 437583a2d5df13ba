// Recipes: the first input byte picks JSON or flat YAML, the rest is the file.
#include "cli/recipe.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  auto path = peft::fuzz::put((data[0] & 1) ? "recipe.yaml" : "recipe.json", data + 1, size - 1);
  return peft::fuzz::guarded([&] { (void)peft::cli::read_recipe(path); });
}
