"""The experiment's gated base is a deterministic function of its config: the gate's
train / measure cycle (increments resumed from checkpoints, a held-out eval between them, the
persistent compilation cache, async checkpoint saves) run twice in fresh processes gives
bit-identical gate.json histories and training losses."""

import json

from conftest import run_python

_SCRIPT = """
import json, sys
from configs import experiment
from refine_jax.experiments import run
exp = experiment.get_config()
exp.pretrain_overrides = ("stage=pretrain train.steps=8 train.eval_every=4 "
                          "train.progress_bar=false checkpoint.every_steps=3")
exp.gate.check_every, exp.gate.fine_every, exp.gate.num_samples = 4, 4, 16
exp.gate.lo, exp.gate.hi, exp.gate.rise_share = 99.0, 100.0, 1.0  # runs to the ceiling
work = sys.argv[1]
run._compilation_cache(exp, work)
run._pretrain_base(exp, work)
gate = json.load(open(work + "/pretrain/gate.json"))
rows = [json.loads(l) for l in open(work + "/pretrain/metrics.jsonl")]
print(json.dumps({"gate": gate["history"], "reason": gate["reason"],
                  "loss": [(r["step"], r["loss"]) for r in rows if "loss" in r],
                  "eval": [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]}))
"""


def test_gate_cycle_is_bit_identical_across_processes(tmp_path):
  out = []
  for name in ("a", "b"):
    proc = run_python(["-c", _SCRIPT, str(tmp_path / name)])
    out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  a, b = out
  steps = [h[0] for h in a["gate"]]
  assert steps == [4, 8]
  assert [s for s, _ in a["loss"]] == list(range(1, 9))  # every step logged once, resumed
  assert a == b  # floats compared exactly: json keeps every bit of a float64
