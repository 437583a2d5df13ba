// LoRA fine-tuning through the installed library alone (find_package(peft), peft::peft).
//   finetune MODEL_DIR TRAIN.jsonl OUT_DIR   e.g. assets/stories260K assets/e2e/train.jsonl out
#include <peft/peft.h>  // the user API in one header

#include <iostream>

int main(int argc, char** argv) try {
  if (argc != 4) return std::cerr << "usage: finetune MODEL_DIR TRAIN.jsonl OUT_DIR\n", 2;
  auto tok = peft::load_tokenizer(argv[1]);
  peft::DataConfig data;
  data.train_file = argv[2];
  data.eval_fraction = 0.05;  // held out
  data.tokenize.max_length = 192;
  peft::DataSplits splits = peft::load_data(data, *tok);

  auto pm = std::make_shared<peft::PeftModel>(peft::load_model(argv[1]));
  pm->add_adapter("default", peft::method_config("lora", {{"r", 8}, {"lora_alpha", 16}}));
  std::cout << pm->trainable_report().to_string() << "\n";

  peft::TrainingArguments args;
  args.output_dir = std::string(argv[3]) + "/run";
  args.max_steps = 40;
  args.learning_rate = 4e-3;
  args.logging_steps = 10;
  args.progress = false;
  peft::Trainer trainer(pm, args, splits.train, &splits.eval);
  double before = trainer.evaluate()["eval_loss"].get<double>();
  trainer.train();
  double after = trainer.evaluate()["eval_loss"].get<double>();
  std::cout << "eval_loss before " << before << " after " << after << "\n";

  pm->save_adapter(std::string(argv[3]) + "/adapter");  // Python peft's format
  return after < before ? 0 : 1;
} catch (const std::exception& e) {  // peft::Error names the file and field
  std::cerr << "finetune: " << e.what() << "\n";
  return 1;
}
