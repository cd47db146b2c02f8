"""Will this config fit and how fast will it run on a TPU slice? Answered on a CPU host.

    python benchmarks/scale_check.py --config=configs/paper/deltanet_1b3_midtrain.py \
        [--topology=v5p-8] [--json=OUT.json] [--no_ntp] [--config.train.microbatches=16 ...]

AOT-compiles the exact jitted train step that `python -m refine_jax.main --config=...` runs
(refine_jax/train/aot.py: same model, mesh, shardings, loss, optimiser, microbatches) for the
named slice through libtpu's compile-only devices, with abstract arguments (nothing of real
size is allocated), and prints per chip: peak HBM vs the chip's, matmul FLOPs per step, tokens
per step, compile seconds, and step time / tokens/s at 40% and 100% of bf16 peak. For a stage
other than pretrain it also compiles the NTP step of the same model, batch and mesh and prints
the stage/NTP ratios of FLOPs and memory (skip with --no_ntp).
The topology defaults to the config's `scale.topology` field (configs/paper/ presets set it).
Exit status: 0 fits (peak <= 90% of HBM per chip), 1 does not fit, 2 cannot check here (no
libtpu: pip install -e ".[tpu-check]").
GPU: libtpu speaks for TPUs only. The same program's per-chip peak is a fair first estimate of
an H100's (80 GiB) need at the same per-device batch; it is reported as such, not measured.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to check.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p-8 (default: the "
                                "config's scale.topology).")
_JSON = flags.DEFINE_string("json", None, "Write the report (and the NTP twin's) here.")
_NO_NTP = flags.DEFINE_bool("no_ntp", False, "Skip the NTP baseline compile.")
_DUMP_TO = flags.DEFINE_string("dump_to", None, "Write XLA:TPU's dumps of the step's compile "
                               "here (optimised HLO, buffer assignment and "
                               "*memory-usage-report.txt: the largest buffers, each with the "
                               "JAX op it comes from).")

GiB = 1 << 30
H100_BYTES = 80 * GiB


def _row(r):
  return (f"| {r.config or r.stage} | {r.topology} ({r.chips} chips, mesh "
          f"{'x'.join(str(v) for v in r.mesh.values())}) | {r.params / 1e9:.2f}B | "
          f"{r.peak_bytes_per_chip / GiB:.1f} / {r.hbm_bytes_per_chip / GiB:.0f} GiB "
          f"({100 * r.peak_bytes_per_chip / r.hbm_bytes_per_chip:.0f}%) | "
          f"{r.flops_per_chip / 1e12:.1f} TF | {r.tokens_per_step} | {r.compile_s:.0f} s | "
          f"{r.step_s_at['40%']:.2f} / {r.step_s_at['100%']:.2f} s | "
          f"{r.tokens_per_s_at['40%']:.0f} | {'yes' if r.fits else 'NO'} |")


HEADER = ("| config | slice | params | peak HBM / chip | FLOPs / chip / step | tokens / step | "
          "compile | step at 40% / 100% bf16 peak | tokens/s at 40% | fits |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main(argv):
  del argv
  from refine_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # compile-only TPU devices need libtpu, not its TPU backend
  from refine_jax.train import aot, validate  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/paper/NAME.py is required")
  topology = _TOPOLOGY.value or config.get("scale", {}).get("topology") or "v5p-8"
  path = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "")
  name = os.path.splitext(os.path.basename(path))[0] or config.stage
  try:
    devices = aot.topology_devices(topology)
    validate.validate_config(config, num_devices=len(devices), process_count=1)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except RuntimeError as e:
    print(f"cannot check here: {e}", file=sys.stderr)
    sys.exit(2)
  report = aot.compile_step(config, topology, config_name=name, dump_to=_DUMP_TO.value or "")
  print(HEADER)
  print(_row(report))
  if "compile_error" in report.memory:
    print(f"XLA refused the program: {report.memory['compile_error']}")
  out = {"report": report.to_json()}
  if report.flops_per_step_cheapest_branches < report.flops_per_step:
    print(f"note: FLOPs count every lax.cond's costliest branch; with the cheapest ones "
          f"{report.flops_per_step_cheapest_branches / report.chips / 1e12:.1f} TF per chip")
  if report.unknown_loops:
    print(f"note: {report.unknown_loops} loop(s) with an unknown trip count were counted once")
  if config.stage != "pretrain" and not _NO_NTP.value:
    ntp = aot.compile_step(aot.ntp_twin(config), topology, config_name=name + " (NTP twin)")
    print(_row(ntp))
    ratios = {"flops": report.flops_per_step / ntp.flops_per_step,
              "peak_memory": report.peak_bytes_per_chip / ntp.peak_bytes_per_chip}
    ratios["flops_cheapest_branches"] = (report.flops_per_step_cheapest_branches /
                                         ntp.flops_per_step_cheapest_branches)
    print(f"{config.stage} / NTP at the same scale: FLOPs x{ratios['flops']:.3f} "
          f"(x{ratios['flops_cheapest_branches']:.3f} with every lax.cond's cheapest branch), "
          f"peak memory x{ratios['peak_memory']:.3f}")
    out.update(ntp=ntp.to_json(), ratio_to_ntp=ratios)
  est = report.peak_bytes_per_chip / H100_BYTES
  print(f"H100 estimate (not measured): the same per-device program needs "
        f"{report.peak_bytes_per_chip / GiB:.1f} GiB = {100 * est:.0f}% of 80 GiB")
  if _JSON.value:
    flat = dict(report.to_json())
    flat.update(out)
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump(flat, f, indent=1)
  sys.exit(0 if report.fits else 1)


if __name__ == "__main__":
  app.run(main)
