"""Fast-weight ops (DeltaNet / Gated DeltaNet) with XLA and Pallas backends.

Public: delta_rule, gated_delta_rule (WORKSPACE.md, Public contracts); pallas_kernels.fused_recurrent.
fused_recurrent (one fused kernel for decoding / short T). Internal, for ReFINE state
capture: delta_rule_with_chunk_states, advance_state (WORKSPACE.md). Pallas kernels are imported
lazily, only when a Pallas backend is dispatched.
"""
from pallas_kernels.ops import (BACKENDS, advance_state, delta_rule,
                                delta_rule_with_chunk_states, gated_delta_rule)

__all__ = ["BACKENDS", "advance_state", "delta_rule", "delta_rule_with_chunk_states",
           "gated_delta_rule"]
