// A tuner asks the Trainer (which owns the optimizer) to restart it: the Adam moments and step
// counts are dropped after the current step, as if a fresh optimizer took over (LT-SFT's phase
// boundary, Ansell et al. 2022, sec. 3.1). Private to the library: no public API involved.
#pragma once

namespace peft {

class PeftModel;

/// Called from Tuner::on_step (after the optimizer step): the Trainer training `pm` clears its
/// optimizer state before the next step.
void request_optimizer_reset(const PeftModel& pm);
/// True, once, when a reset was requested for `pm` since the last call.
bool take_optimizer_reset(const PeftModel& pm);
/// The step at which an active adapter of `pm` starts its second run (LT-SFT: phase1_steps,
/// also inside a COMPOSITE), or -1. The Trainer gives each run its own learning-rate schedule.
int64_t second_run_start(const PeftModel& pm);

}  // namespace peft
