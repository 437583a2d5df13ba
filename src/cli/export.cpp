// `peft export --adapter DIR --out DIR`: writes a trained adapter in its inference form, the
// simpler standard adapter it equals at inference (src/tuners/export.h; e.g. AdaMix -> the
// BOTTLENECK adapter holding the experts' averaged weights). Works on the files alone.
#include <iostream>

#include "cli/command.h"
#include "tuners/export.h"

namespace peft::cli {
namespace {

int run_export(Args& a) {
  a.reject_unknown({"adapter", "out"});
  std::string in = a.get("adapter"), out = a.get("out");
  std::string type = export_adapter_dir(in, out);
  std::cout << "exported " << in << " -> " << out << " (" << type << ")\n";
  return 0;
}

PEFT_REGISTER_COMMAND("export", "--adapter DIR --out DIR: write an adapter in its inference form (AdaMix -> averaged bottleneck)",
                      run_export);

}  // namespace
}  // namespace peft::cli
