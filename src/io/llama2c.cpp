#include "io/llama2c.h"

#include <torch/torch.h>

#include <cstring>
#include <filesystem>

#include "peft/error.h"

namespace peft {

std::string find_llama2c_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(path)) return path.size() > 4 && path.substr(path.size() - 4) == ".bin" ? path : "";
  if (!fs::is_directory(path) || fs::exists(fs::path(path) / "config.json")) return "";
  std::string found;
  for (auto& e : fs::directory_iterator(path)) {
    auto name = e.path().filename().string();
    if (e.path().extension() == ".bin" && name.rfind("tok", 0) != 0 && name != "tokenizer.bin") {
      PEFT_CHECK(found.empty(), path, ": more than one llama2.c checkpoint (.bin) in the folder");
      found = e.path().string();
    }
  }
  return found;
}

namespace {
// Undo llama2.c's interleaved rotary layout: rows (2j, 2j+1) of each head become (j, j+hd/2).
torch::Tensor permute_rotary(const torch::Tensor& w, int64_t n_heads) {
  int64_t out = w.size(0), in = w.size(1);
  return w.view({n_heads, out / n_heads / 2, 2, in}).transpose(1, 2).reshape({out, in}).contiguous();
}
}  // namespace

void import_llama2c(const std::string& bin_path, nlohmann::json* config, TensorMap* weights) {
  std::string bytes = read_file(bin_path);
  PEFT_CHECK(bytes.size() >= 28, bin_path, ": truncated llama2.c header (", bytes.size(), " bytes)");
  int32_t h[7];
  std::memcpy(h, bytes.data(), sizeof h);
  const int64_t dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv = h[4], seq_len = h[6];
  const bool shared = h[5] > 0;
  const int64_t vocab = shared ? h[5] : -static_cast<int64_t>(h[5]);
  PEFT_CHECK(dim > 0 && hidden > 0 && n_layers > 0 && n_heads > 0 && n_kv > 0 && vocab > 0 && seq_len > 0 &&
                 dim % n_heads == 0 && n_heads % n_kv == 0 && dim < (1 << 16) && hidden < (1 << 18) &&
                 n_layers < 1024 && vocab < (1 << 22) && seq_len < (1 << 22),
             bin_path, ": implausible llama2.c header (dim ", dim, ", hidden_dim ", hidden, ", n_layers ", n_layers,
             ", n_heads ", n_heads, ", n_kv_heads ", n_kv, ", vocab ", h[5], ", seq_len ", seq_len, ")");
  const int64_t hd = dim / n_heads, kv_dim = n_kv * hd;
  int64_t need = vocab * dim + n_layers * (2 * dim + 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden) + dim +
                 seq_len * hd;  // freq_cis_real + freq_cis_imag (seq_len * hd/2 each), unused
  if (!shared) need += vocab * dim;
  int64_t have = (static_cast<int64_t>(bytes.size()) - 28) / 4;
  PEFT_CHECK(have >= need, bin_path, ": truncated: ", have, " floats after the header, the header implies ", need);

  auto all = torch::from_blob(bytes.data() + 28, {have}, torch::kFloat32).clone();
  int64_t pos = 0;
  auto take = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    auto t = all.slice(0, pos, pos + n).view(shape);
    pos += n;
    return t;
  };
  TensorMap& w = *weights;
  w["model.embed_tokens.weight"] = take({vocab, dim});
  auto att_norm = take({n_layers, dim});
  auto wq = take({n_layers, dim, dim});
  auto wk = take({n_layers, kv_dim, dim});
  auto wv = take({n_layers, kv_dim, dim});
  auto wo = take({n_layers, dim, dim});
  auto ffn_norm = take({n_layers, dim});
  auto w1 = take({n_layers, hidden, dim});
  auto w2 = take({n_layers, dim, hidden});
  auto w3 = take({n_layers, hidden, dim});
  w["model.norm.weight"] = take({dim});
  take({seq_len * hd});  // precomputed rotary tables: recomputed by the model
  w["lm_head.weight"] = shared ? w["model.embed_tokens.weight"] : take({vocab, dim});
  for (int64_t l = 0; l < n_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    w[p + "input_layernorm.weight"] = att_norm[l];
    w[p + "self_attn.q_proj.weight"] = permute_rotary(wq[l], n_heads);
    w[p + "self_attn.k_proj.weight"] = permute_rotary(wk[l], n_kv);
    w[p + "self_attn.v_proj.weight"] = wv[l];
    w[p + "self_attn.o_proj.weight"] = wo[l];
    w[p + "post_attention_layernorm.weight"] = ffn_norm[l];
    w[p + "mlp.gate_proj.weight"] = w1[l];
    w[p + "mlp.down_proj.weight"] = w2[l];
    w[p + "mlp.up_proj.weight"] = w3[l];
  }
  if (shared) w.erase("lm_head.weight");
  *config = {{"architectures", {"LlamaForCausalLM"}},
             {"model_type", "llama"},
             {"hidden_size", dim},
             {"intermediate_size", hidden},
             {"num_hidden_layers", n_layers},
             {"num_attention_heads", n_heads},
             {"num_key_value_heads", n_kv},
             {"vocab_size", vocab},
             {"max_position_embeddings", seq_len},
             {"rms_norm_eps", 1e-5},  // llama2.c's rmsnorm epsilon
             {"rope_theta", 10000.0},
             {"hidden_act", "silu"},
             {"tie_word_embeddings", shared},
             {"bos_token_id", 1},
             {"eos_token_id", 2},
             {"torch_dtype", "float32"}};
}

}  // namespace peft
