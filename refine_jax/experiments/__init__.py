"""NTP vs ReFINE experiment: several training arms x seeds from one NTP checkpoint, evaluated
and summarised with seed-paired statistics, tables and one plot.

  python -m refine_jax.experiments --config=configs/experiment.py \\
      [--config.checkpoint=runs/pretrain-deltanet] [--workdir=runs/experiment]

Each arm is a chain of stage configs run one after another, each stage starting from the
previous one's weights (the first from `checkpoint`); every stage of every arm gets the same
number of steps (`steps`), the same common overrides and, per seed, the same `seed` and
data.shuffle_seed, so arms differ only in their training objective. Arms must also match in
batch size and optimiser updates (`check_matched`; an NTP arm gets ReFINE's
refine.ppo_epochs x ppo_minibatches through train.ntp_epochs x ntp_minibatches). Arm spec:

    "CONFIG.py key=value key=value | CONFIG2.py key=value"

e.g. SFT-mid = "configs/recall.py stage=pretrain train.ntp_epochs=2" (the same data and
optimiser with the NTP-only loop) and ReFINE-mid = "configs/recall.py".
With no `checkpoint`, one is pretrained first (pretrain_config) in <workdir>/pretrain; with
`gate.enabled` it trains in increments until its held-out value accuracy is inside
[gate.lo, gate.hi] (eval/gate.py), or the experiment is VOID (experiment.json/.md say why and
no arm trains). The base model is evaluated once as arm "base".
Statistics (eval/stats.py): per task and context length, a t-interval over seeds per arm and
the per-seed differences arm - `reference` (mean, std, t-interval). Diagnostics per run:
reward mean/std, clip fraction, selected entropy (means over logged steps) and where ReFINE's
entropy selection lands on held-out recall rows (fraction on value tokens vs uniform chance).
Everything resumes: finished stages are skipped by the stages' own resume logic and evaluated
runs keep their results.json. Outputs in <workdir>: experiment.json (per-seed results,
intervals, paired differences, diagnostics, budgets, gate, wall times), experiment.md,
experiment.png (per-length bars with intervals, paired differences below).
"""

from refine_jax.experiments.arms import (apply_overrides, arm_budget, arm_names, check_matched,
                                         load_config_file, parse_arm, stage_config)
from refine_jax.experiments.run import run_experiment
from refine_jax.experiments.summary import summarize, write_summary, write_void

__all__ = ["apply_overrides", "arm_budget", "arm_names", "check_matched", "load_config_file",
           "parse_arm", "run_experiment", "stage_config", "summarize", "write_summary",
           "write_void"]
