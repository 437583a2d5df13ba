// Precompiled header: LibTorch and the standard library pieces nearly every file uses.
// Parsing <torch/torch.h> costs ~10 s per translation unit on these machines; once here it is paid once per target.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>
#include <map>
#include <memory>
#include <functional>
#include <stdexcept>
