// Training data: local JSONL / JSON / CSV / TSV / TXT files -> tokenized examples -> batches.
//
//   peft::DataConfig cfg;
//   cfg.train_file = "assets/e2e/train.jsonl";     // {"prompt": ..., "completion": ...}
//   cfg.eval_fraction = 0.1;                        // or cfg.eval_file
//   cfg.max_length = 128;
//   peft::DataSplits data = peft::load_data(cfg, *tokenizer);
//   peft::DataLoader loader(data.train, /*batch_size=*/8, /*seed=*/42);
//   peft::Batch b = loader.next_batch();             // wraps into the next epoch
//   nlohmann::json pos = loader.state();             // save with the checkpoint ...
//   loader.restore(pos);                             // ... and the resumed run sees the same batches
//
// Rows that cannot be used (missing field, wrong type, empty text, invalid UTF-8, unparsable
// CSV line, bad JSON) are reported as "FILE:LINE: reason"; DataFormat::bad_rows decides whether
// that is fatal or the row is skipped (counted, with one warning on stderr per file).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace peft {

class Tokenizer;

/// How the columns of a row become an example.
///   Text:             text                         -> causal LM, loss on every token
///   PromptCompletion: prompt, completion           -> causal LM, loss on the completion only
///   Alpaca:           instruction, input?, output  -> causal LM on the Alpaca prompt template
///   Classification:   text, text_pair?, label      -> sequence classification (or regression)
///   Seq2Seq:          source, target               -> encoder-decoder
/// Auto picks the kind from the columns present (see detect_data_kind).
enum class DataKind { Auto, Text, PromptCompletion, Alpaca, Classification, Seq2Seq };
std::string data_kind_name(DataKind k);                 // "auto", "text", "prompt_completion", ...
DataKind data_kind_from_name(const std::string& name);  // peft::Error listing the names

enum class BadRowPolicy { Fail, Skip };
BadRowPolicy bad_row_policy_from_name(const std::string& name);  // "fail" | "skip"

/// Column mapping and file parsing options.
struct DataFormat {
  DataKind kind = DataKind::Auto;
  std::string text_column = "text";
  std::string text_pair_column = "text_pair";  // classification; used when the row has it
  std::string label_column = "label";
  std::string prompt_column = "prompt";
  std::string completion_column = "completion";
  std::string instruction_column = "instruction";
  std::string input_column = "input";  // Alpaca; optional (missing or "" = no input section)
  std::string output_column = "output";
  std::string source_column = "source";
  std::string target_column = "target";
  /// "" = from the extension: .jsonl (one object a line), .json (an array of objects),
  /// .csv, .tsv (header row first), .txt. Otherwise one of "jsonl", "json", "csv", "tsv", "txt".
  std::string file_type;
  /// CSV/TSV: RFC 4180 double-quote handling. Off = every character literal (GLUE TSVs).
  bool csv_quoting = true;
  /// .txt: false = one example per non-empty line; true = the whole file is one token stream
  /// cut into max_length blocks: paragraphs (split at blank lines) are tokenized one by one with
  /// the tokenizer's specials (BOS), concatenated, EOS appended. With kind Text, a text field of
  /// any file type is then chunked the same way instead of truncated.
  bool txt_whole_file = false;
  /// Classification with a real-valued label (e.g. STS-B): Batch::labels is float [B].
  bool regression = false;
  BadRowPolicy bad_rows = BadRowPolicy::Fail;
};

/// One row as read from a file, before tokenization. Values are kept as JSON (CSV/TXT values
/// are strings). `line` is the 1-based line the row starts on (.json arrays: the element index).
struct DataRecord {
  nlohmann::json fields;  // an object
  std::string file;
  int64_t line = 0;
  std::string where() const;  // "FILE:LINE"
};

/// Counts of what a read/tokenization pass kept and skipped.
struct DataStats {
  int64_t rows = 0;     // rows read (kept + skipped)
  int64_t skipped = 0;  // bad rows skipped under BadRowPolicy::Skip
  std::vector<std::string> skipped_reasons;  // the first few "FILE:LINE: reason"
};

/// Reads the rows of a file (no tokenization). Bad rows: peft::Error "FILE:LINE: reason", or
/// skipped and counted in *stats under BadRowPolicy::Skip.
std::vector<DataRecord> read_records(const std::string& path, const DataFormat& fmt, DataStats* stats = nullptr);

/// The kind implied by the columns present in the first rows: instruction+output -> Alpaca,
/// prompt+completion -> PromptCompletion, source+target -> Seq2Seq, text+label ->
/// Classification, text -> Text (column names as in fmt). peft::Error naming the file and the
/// columns found when nothing matches.
DataKind detect_data_kind(const std::vector<DataRecord>& rows, const DataFormat& fmt, const std::string& file);

/// The Alpaca prompt (everything before the response) for an instruction and optional input;
/// uses the "### Instruction:" / "### Input:" / "### Response:" headers.
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

/// One tokenized example.
struct Example {
  std::vector<int64_t> input_ids;
  /// Causal LM: same length as input_ids, -100 where no loss (the prompt). Seq2Seq: the target
  /// ids. Classification: empty (see label).
  std::vector<int64_t> labels;
  std::vector<int64_t> token_type_ids;  // sentence-pair classification, when the tokenizer gives them
  int64_t label = -1;                   // classification: index into Dataset::label_names
  float target = 0.f;                   // regression
  std::string where;                    // "FILE:LINE" of the source row ("FILE:LINE+" when packed)
};

struct Dataset {
  DataKind kind = DataKind::Text;
  std::vector<Example> examples;
  std::vector<std::string> label_names;  // classification: index -> label as written in the file
  bool regression = false;
  int64_t pad_id = 0;                    // used for input_ids padding
  std::string source;                    // file(s) it came from, for messages
  DataStats stats;
  size_t size() const { return examples.size(); }
  bool is_causal_lm() const;
};

/// Tokenization options.
struct TokenizeOptions {
  int64_t max_length = 512;         // input_ids (and Seq2Seq labels) are truncated to this
  int64_t max_target_length = 0;    // Seq2Seq labels; 0 = max_length
  bool add_eos = true;              // causal LM / Seq2Seq: append EOS (when the tokenizer has one)
  /// Classification: the label set, in index order. Empty = collect it from the rows, sorted
  /// (numerically when every label is an integer, else as strings).
  std::vector<std::string> labels;
};

/// Tokenizes rows of `kind` (not Auto). Bad rows as in read_records (prompt filling all of
/// max_length, empty text, invalid UTF-8); a classification label outside opts.labels (when
/// given) is always a peft::Error naming FILE:LINE.
Dataset tokenize_records(const std::vector<DataRecord>& rows, DataKind kind, const Tokenizer& tok,
                         const TokenizeOptions& opts, const DataFormat& fmt, const std::string& source);

/// Greedy in-order packing of causal-LM examples into blocks of at most max_length tokens
/// (an example never straddles two blocks; longer ones stay alone). Labels keep their -100s.
Dataset pack_dataset(const Dataset& ds, int64_t max_length);

/// Deterministic split: a seeded permutation picks round(fraction * size) examples for the
/// second part (at least 1 when fraction > 0). Order within each part follows the original.
std::pair<Dataset, Dataset> split_dataset(const Dataset& ds, double fraction, uint64_t seed);

/// Everything a training run needs to get its data.
struct DataConfig {
  std::string train_file;
  std::string eval_file;       // optional; else eval_fraction of train_file is held out
  double eval_fraction = 0.0;  // used only without eval_file
  uint64_t seed = 42;          // split seed
  DataFormat format;
  TokenizeOptions tokenize;
  bool pack = false;  // causal LM only: pack short examples into max_length blocks
};

struct DataSplits {
  Dataset train, eval;  // eval may be empty
};

/// Reads, tokenizes, splits and (optionally) packs. The eval data uses the train label set.
/// An empty dataset (after skipping) is a peft::Error naming the file.
DataSplits load_data(const DataConfig& cfg, const Tokenizer& tok);

/// A padded batch. Right padding; attention_mask 1 on real tokens.
struct Batch {
  torch::Tensor input_ids;       // [B, T] int64, padded with Dataset::pad_id
  torch::Tensor attention_mask;  // [B, T] int64
  torch::Tensor labels;          // causal LM: [B, T] (-100 on padding); Seq2Seq: [B, T_target]
                                 // (-100 on padding); classification: [B] int64 (float: regression)
  torch::Tensor token_type_ids;  // [B, T] when the examples have them, else undefined
  std::vector<size_t> indices;   // which examples of the dataset
  int64_t num_tokens = 0;        // non-padding input tokens
  int64_t size() const { return static_cast<int64_t>(indices.size()); }
};

/// Pads examples[indices] into a batch.
Batch collate(const Dataset& ds, const std::vector<size_t>& indices);

/// Every example once, in order, in batches of batch_size (the last may be smaller): for eval.
std::vector<Batch> sequential_batches(const Dataset& ds, int64_t batch_size);

/// Endless shuffled batches: epoch e visits a permutation of the examples determined by (seed, e)
/// only (a platform-independent generator, not std::shuffle). With drop_last, a final partial
/// batch of each epoch is skipped. state()/restore() save and restore the position exactly.
///
/// Sharded (shard(rank, world_size), data parallelism as torch's DistributedSampler): every rank
/// walks the same permutation; each call consumes one global batch of batch_size * world_size
/// examples, of which rank r takes positions r, r + world_size, ... So the ranks' shards are
/// disjoint and together are exactly the batch one process with batch_size * world_size would
/// see. Tail rule: the last global batch of an epoch may be short and is split the same way, so
/// some ranks get fewer examples, and a rank can get none (an empty Batch, size() 0) — nothing
/// is padded or repeated (drop_last: the short global batch is skipped).
class DataLoader {
 public:
  DataLoader(const Dataset& ds, int64_t batch_size, uint64_t seed, bool shuffle = true, bool drop_last = false);
  /// This loader serves rank `rank` of `world_size` (default 0 of 1).
  void shard(int64_t rank, int64_t world_size);
  Batch next_batch();
  int64_t epoch() const { return epoch_; }        // 0-based epoch of the next batch
  int64_t position() const { return position_; }  // examples of this epoch already served (all ranks)
  int64_t batches_per_epoch() const;              // global batches
  /// {"epoch", "position", "seed", "batch_size", "world_size", "dataset_size", "shuffle", "drop_last"}
  nlohmann::json state() const;
  /// Restores a state(); peft::Error when seed/dataset size/shuffle/drop_last differ. The
  /// position counts examples of the epoch's permutation, so a state saved with another batch
  /// size or world size continues at the first example not yet served.
  void restore(const nlohmann::json& state);
  /// The example order of epoch e.
  std::vector<size_t> epoch_order(int64_t e) const;

 private:
  const Dataset& ds_;
  int64_t batch_size_;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  int64_t rank_ = 0, world_ = 1;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<size_t> order_;
};

}  // namespace peft
