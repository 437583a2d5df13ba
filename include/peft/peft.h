// peft.cpp for users: everything needed to load a model, add / load / save adapters, train,
// evaluate, generate, merge and combine, in one include. Writing a new method or model family
// needs the extension headers as well (peft/extend/tuner.h's Tuner / TunerLayer / wrap, peft/module.h's
// slots and Layer, peft/model.h's PretrainedModel and roles).
//
//   #include <peft/peft.h>
//   auto pm = std::make_shared<peft::PeftModel>(peft::load_model("assets/stories260K"));
//   pm->add_adapter("default", peft::method_config("lora", {{"r", 8}}));
//   peft::Trainer(pm, args, train, &eval).train();
//   pm->save_adapter("out/adapter");                 // Python peft's format
#pragma once
#include "peft/combine.h"
#include "peft/data.h"
#include "peft/error.h"
#include "peft/generate.h"
#include "peft/io.h"
#include "peft/log.h"
#include "peft/model.h"
#include "peft/presets.h"
#include "peft/quant.h"
#include "peft/tokenizer.h"
#include "peft/trainer.h"
#include "peft/tuner.h"
