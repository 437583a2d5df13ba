// Building a model without initialising its Linear weights: each weight is allocated
// (torch::empty) but never written, so its pages are not resident until someone fills it.
// The benchmark's large shapes (peft bench --shape llama3-8b) build the model this way and fill
// and quantize one layer at a time, so the whole float model is never resident (issue 14).
//
//   { peft::SkipLinearInit skip; model = peft::create_model(cfg, lo); }   // weights unwritten
//   ... peft::init_linear_weight(layer) on every Linear before the first forward ...
#pragma once

namespace peft {

class Linear;

/// While alive (on this thread), peft::Linear's constructor leaves its weight unwritten.
class SkipLinearInit {
 public:
  SkipLinearInit();
  ~SkipLinearInit();
  SkipLinearInit(const SkipLinearInit&) = delete;
  SkipLinearInit& operator=(const SkipLinearInit&) = delete;

 private:
  bool prev_;
};

/// The init Linear's constructor gives its weight, and skips under SkipLinearInit: nn.Linear's
/// kaiming_uniform(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)).
void init_linear_weight(Linear& l);

}  // namespace peft
