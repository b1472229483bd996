"""Settings shared by several places, as plain dicts spread into the real constructors.

Low in the layers so that both the chapters' helpers (``course_lib.finetune``) and the assets they
build on (``course_lib.assets.chat``, which runs chapter 8's recipe) read the one copy.
"""

from __future__ import annotations

from typing import Any

# What every TRL run of the course sets besides the arguments a chapter writes itself, spread into
# SFTConfig(...) / DPOConfig(...): nothing saved or reported, a seeded data order, a constant
# learning rate (the runs are short), a log line every 10 steps, no data-loader worker processes.
TRL_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 10,
    "seed": 0,
    "data_seed": 0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "dataloader_num_workers": 0,
    "per_device_eval_batch_size": 32,
}
