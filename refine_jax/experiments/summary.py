"""An experiment's summary: seed statistics and tables, experiment.json / .md / .png, or the
VOID files with the gate's history and picture."""

from __future__ import annotations

import json

from refine_jax import paths as path_io
from refine_jax.eval import report, stats


def summarize(per_arm: dict[str, list[dict]], *, seeds=None, reference: str = "",
              diagnostics: dict | None = None, meta: dict | None = None,
              confidence: float = 0.95) -> dict:
  """{arm: [results per seed]} -> mean ± std aggregates, t-intervals, seed-paired differences
  arm - reference (every arm with as many seeds as the reference) and the markdown tables."""
  agg = {arm: report.aggregate(rs) for arm, rs in per_arm.items()}
  ivals = {arm: stats.intervals(rs, confidence) for arm, rs in per_arm.items()}
  paired = {}
  if reference in per_arm:
    ref = per_arm[reference]
    paired = {arm: stats.paired_differences(rs, ref, confidence) for arm, rs in per_arm.items()
              if arm != reference and len(rs) == len(ref) and len(rs) > 1}
  tables = [report.interval_table(ivals, title=f"Scores: mean over seeds [{confidence:.0%} "
                                               "t-interval]")]
  if paired:
    tables.append(report.paired_table(paired, title=(
        f"Paired differences arm - {reference} (per seed): mean ± std [{confidence:.0%} "
        "t-interval]")))
  if diagnostics:
    tables.append(report.diagnostics_table(diagnostics, budgets=(meta or {}).get("budgets"),
                                           title="Training and selection diagnostics (mean "
                                                 "over seeds)"))
  return {"seeds": list(seeds) if seeds is not None else None, "per_seed": per_arm,
          "aggregate": agg, "intervals": ivals, "paired": paired, "reference": reference,
          "diagnostics": diagnostics or {}, "meta": meta or {}, "table": tables[0],
          "tables": tables, "void": False}

def _json_keys(tree):
  """Int dict keys (context lengths) -> str, recursively, for json.dumps."""
  if isinstance(tree, dict):
    return {str(k): _json_keys(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_keys(v) for v in tree]
  return tree

def write_summary(summary: dict, workdir: str, title: str = "NTP vs ReFINE") -> dict:
  paths = {k: path_io.join(workdir, f"experiment.{k}") for k in ("json", "md", "png")}
  keep = ("seeds", "per_seed", "aggregate", "intervals", "paired", "reference", "diagnostics",
          "meta", "void")
  path_io.write_text(paths["json"], json.dumps(_json_keys({k: summary.get(k) for k in keep}),
                                               indent=2, default=_nan_none))
  gate = (summary.get("meta") or {}).get("gate") or {}
  path_io.write_text(paths["md"], f"# {title}\n\n" + _setup_line(summary) +
                     "\n".join(summary["tables"] + _gate_lines(gate, workdir)))
  report.plot_experiment(summary["intervals"], paths["png"], title=title,
                         paired=summary.get("paired") or None,
                         reference=summary.get("reference", ""))
  return paths

def _setup_line(summary) -> str:
  meta = summary.get("meta") or {}
  bits = []
  if summary.get("seeds") is not None:
    bits.append(f"seeds {summary['seeds']}")
  for arm, b in (meta.get("budgets") or {}).items():
    bits.append(f"{arm}: batch {b['batch_size']}, {b['steps']} steps, {b['updates']} updates")
  g = meta.get("gate")
  if g:
    bits.append(f"base: gate {g.get('metric', '')} {g['score']:.1f} ± {g.get('se', 0.0):.1f} "
                f"at step {g['step']} (band {g['band']})")
  if meta.get("wall_s", {}).get("total") is not None:
    bits.append(f"wall {meta['wall_s']['total'] / 60:.1f} min")
  env = meta.get("environment")
  if env:
    bits.append(f"{env['machine']['cpu']}, {env['machine']['cores']} cores, jax "
                f"{env['packages'].get('jax')}")
  return ("; ".join(bits) + "\n\n") if bits else ""

def _nan_none(x):
  return None if isinstance(x, float) and x != x else str(x)

def write_void(workdir: str, reason: str, *, title: str = "NTP vs ReFINE",
               meta: dict | None = None) -> dict:
  """experiment.json {"void": true, "reason", "meta"} and an experiment.md that says VOID and
  why (with the gate's score history) instead of a table."""
  paths = {k: path_io.join(workdir, f"experiment.{k}") for k in ("json", "md")}
  path_io.write_text(paths["json"], json.dumps(_json_keys({"void": True, "reason": reason,
                                                            "meta": meta or {}}), indent=2))
  lines = [f"# {title}", "", f"**VOID**: {reason}.", "",
           "No arm was trained: a base outside the headroom band cannot show a difference "
           "between objectives.", ""]
  gate = (meta or {}).get("gate") or {}
  lines += _gate_lines(gate, workdir)
  path_io.write_text(paths["md"], "\n".join(lines) + "\n")
  return paths

def _gate_lines(gate: dict, workdir: str) -> list[str]:
  """experiment.md's gate section: the picture (gate.png beside it) and the checks' table."""
  hist = gate.get("history") or []
  if not hist:
    return []
  report.plot_gate(gate, path_io.join(workdir, "gate.png"))
  lines = ["## Headroom gate", "", "![gate](gate.png)", "",
           "| base step | held-out score | standard error |", "|---|---|---|"]
  return lines + [f"| {h[0]} | {h[1]:.1f} | {h[2] if len(h) > 2 else 0.0:.2f} |"
                  for h in hist] + [""]
