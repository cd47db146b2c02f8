"""Fast-weight ops (DeltaNet / Gated DeltaNet) with XLA and Pallas backends.

Public: delta_rule, gated_delta_rule (WORKSPACE.md, Public contracts). delta_rule_scan is the
one entry behind them and the models (any T; decode steps take the fused kernel; chunk-boundary
states on request); advance_state moves a state through masked tokens (ReFINE's rollout
caches). BACKENDS is the one backend vocabulary. Pallas is imported only when a Pallas backend
runs.
"""
from pallas_kernels.ops import (BACKENDS, advance_state, delta_rule, delta_rule_scan,
                                gated_delta_rule)

__all__ = ["BACKENDS", "advance_state", "delta_rule", "delta_rule_scan", "gated_delta_rule"]
