// Batching: padding (collate), sequential eval batches, and the resumable shuffled DataLoader.
#include <algorithm>

#include "peft/data.h"
#include "peft/error.h"
#include "train/data_internal.h"

namespace peft {

namespace {
torch::Tensor to_tensor(const std::vector<int64_t>& v, int64_t rows, int64_t cols) {
  return torch::from_blob(const_cast<int64_t*>(v.data()), {rows, cols}, torch::kInt64).clone();
}
}  // namespace

Batch collate(const Dataset& ds, const std::vector<size_t>& idx) {
  PEFT_CHECK(!idx.empty(), ds.source, ": empty batch");
  Batch b;
  b.indices = idx;
  const int64_t B = static_cast<int64_t>(idx.size());
  int64_t T = 0, L = 0;
  bool types = false;
  for (size_t i : idx) {
    PEFT_CHECK(i < ds.size(), ds.source, ": example index ", i, " out of range (", ds.size(), " examples)");
    const Example& e = ds.examples[i];
    T = std::max<int64_t>(T, static_cast<int64_t>(e.input_ids.size()));
    L = std::max<int64_t>(L, static_cast<int64_t>(e.labels.size()));
    types = types || !e.token_type_ids.empty();
  }
  std::vector<int64_t> ids(static_cast<size_t>(B * T), ds.pad_id), mask(static_cast<size_t>(B * T), 0),
      tt(types ? static_cast<size_t>(B * T) : 0, 0);
  bool lm = ds.is_causal_lm(), s2s = ds.kind == DataKind::Seq2Seq;
  std::vector<int64_t> labels(static_cast<size_t>(lm ? B * T : s2s ? B * L : 0), -100);
  for (int64_t r = 0; r < B; ++r) {
    const Example& e = ds.examples[idx[static_cast<size_t>(r)]];
    size_t off = static_cast<size_t>(r * T);
    std::copy(e.input_ids.begin(), e.input_ids.end(), ids.begin() + static_cast<std::ptrdiff_t>(off));
    std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(off), e.input_ids.size(), 1);
    if (types) std::copy(e.token_type_ids.begin(), e.token_type_ids.end(), tt.begin() + static_cast<std::ptrdiff_t>(off));
    size_t loff = static_cast<size_t>(r * (lm ? T : L));
    if (lm || s2s) std::copy(e.labels.begin(), e.labels.end(), labels.begin() + static_cast<std::ptrdiff_t>(loff));
    b.num_tokens += static_cast<int64_t>(e.input_ids.size());
  }
  b.input_ids = to_tensor(ids, B, T);
  b.attention_mask = to_tensor(mask, B, T);
  if (types) b.token_type_ids = to_tensor(tt, B, T);
  if (lm) {
    b.labels = to_tensor(labels, B, T);
  } else if (s2s) {
    b.labels = to_tensor(labels, B, L);
  } else if (ds.regression) {
    std::vector<float> t;
    for (size_t i : idx) t.push_back(ds.examples[i].target);
    b.labels = torch::tensor(t, torch::kFloat32);
  } else {
    std::vector<int64_t> t;
    for (size_t i : idx) t.push_back(ds.examples[i].label);
    b.labels = torch::tensor(t, torch::kInt64);
  }
  return b;
}

std::vector<Batch> sequential_batches(const Dataset& ds, int64_t batch_size) {
  PEFT_CHECK(batch_size > 0, "batch size must be > 0, got ", batch_size);
  std::vector<Batch> out;
  for (size_t s = 0; s < ds.size(); s += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx;
    for (size_t i = s; i < std::min(ds.size(), s + static_cast<size_t>(batch_size)); ++i) idx.push_back(i);
    out.push_back(collate(ds, idx));
  }
  return out;
}

DataLoader::DataLoader(const Dataset& ds, int64_t batch_size, uint64_t seed, bool shuffle, bool drop_last)
    : ds_(ds), batch_size_(batch_size), seed_(seed), shuffle_(shuffle), drop_last_(drop_last) {
  PEFT_CHECK(batch_size > 0, "batch size must be > 0, got ", batch_size);
  PEFT_CHECK(ds.size() > 0, ds.source, ": empty dataset");
  PEFT_CHECK(!drop_last || static_cast<int64_t>(ds.size()) >= batch_size, ds.source, ": ", ds.size(),
             " examples is fewer than one batch of ", batch_size, " (drop_last)");
  order_ = epoch_order(0);
}

std::vector<size_t> DataLoader::epoch_order(int64_t e) const {
  if (!shuffle_) {
    std::vector<size_t> p(ds_.size());
    for (size_t i = 0; i < p.size(); ++i) p[i] = i;
    return p;
  }
  // Mix the epoch into the seed so each epoch's permutation depends on (seed, epoch) only.
  data_detail::SplitMix64 g{seed_ ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(e + 1))};
  return data_detail::permutation(ds_.size(), g.next());
}

void DataLoader::shard(int64_t rank, int64_t world_size) {
  PEFT_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "data loader: bad shard ", rank, " of ", world_size);
  PEFT_CHECK(!drop_last_ || static_cast<int64_t>(ds_.size()) >= batch_size_ * world_size, ds_.source, ": ",
             ds_.size(), " examples is fewer than one global batch of ", batch_size_, " x ", world_size, " ranks (drop_last)");
  rank_ = rank;
  world_ = world_size;
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = static_cast<int64_t>(ds_.size()), g = batch_size_ * world_;
  return drop_last_ ? n / g : (n + g - 1) / g;
}

Batch DataLoader::next_batch() {
  const int64_t n = static_cast<int64_t>(ds_.size()), global = batch_size_ * world_;
  if (position_ >= n || (drop_last_ && position_ + global > n)) {
    ++epoch_;
    position_ = 0;
    order_ = epoch_order(epoch_);
  }
  const int64_t end = std::min(n, position_ + global);
  std::vector<size_t> idx;
  for (int64_t i = position_ + rank_; i < end; i += world_) idx.push_back(order_[static_cast<size_t>(i)]);
  position_ = end;
  if (idx.empty()) return Batch();  // this rank's share of a short last batch
  return collate(ds_, idx);
}

nlohmann::json DataLoader::state() const {
  return {{"epoch", epoch_},           {"position", position_},         {"seed", seed_},
          {"batch_size", batch_size_}, {"world_size", world_},          {"dataset_size", ds_.size()},
          {"shuffle", shuffle_},       {"drop_last", drop_last_}};
}

void DataLoader::restore(const nlohmann::json& s) {
  auto field = [&](const char* k) -> const nlohmann::json& {
    PEFT_CHECK(s.is_object() && s.contains(k), "data loader state: missing field '", k, "'");
    return s.at(k);
  };
  auto check = [&](const char* k, const nlohmann::json& mine) {
    PEFT_CHECK(field(k) == mine, "data loader state: field '", k, "' is ", field(k).dump(), " but this run has ",
               mine.dump(), " (resume with the same data and settings)");
  };
  check("seed", seed_);
  check("dataset_size", ds_.size());
  check("shuffle", shuffle_);
  check("drop_last", drop_last_);
  int64_t e = field("epoch").get<int64_t>(), p = field("position").get<int64_t>();
  PEFT_CHECK(e >= 0 && p >= 0 && p <= static_cast<int64_t>(ds_.size()), "data loader state: bad epoch/position ", e,
             "/", p);
  epoch_ = e;
  position_ = p;
  order_ = epoch_order(epoch_);
}

}  // namespace peft
