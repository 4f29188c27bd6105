"""Head pruning (masked and physical) and MHA -> GQA/MQA conversion.

* :mod:`.schedules` - when to prune how many heads, and which (pure step math).
* :mod:`.importance` - head rankings: gradient importance, ablation, entropy, random, role.
* :mod:`.l0` - hard-concrete gates with an expected-L0 penalty (Voita et al. 2019).
* :mod:`.surgery` - physical removal (GQA-aware), K/V head conversion, checkpoint loading.
* :mod:`.callback` - the Lightning callback driven by ``conf/pruning/*.yaml``.
* :mod:`.curves` - pruning curves (CSV, PNG, overlays).
"""

from mhaexp.pruning.callback import (
    InitQualityCallback,
    PruningCallback,
    PruningConfig,
    build_pruning_callback,
    validate_pruning,
)
from mhaexp.pruning.curves import compute_pruning_curve, plot_pruning_curves, write_curve_csv
from mhaexp.pruning.importance import (
    ablation_importance,
    entropy_scores,
    evaluate,
    gradient_importance,
    head_scores,
    random_scores,
    role_scores,
)
from mhaexp.pruning.l0 import HardConcreteGate, attach_l0_gates, fold_l0_gates
from mhaexp.pruning.schedules import gradual_fraction, iterative_counts, select_heads
from mhaexp.pruning.surgery import (
    apply_mask,
    convert_to_gqa,
    load_init,
    load_model,
    load_module,
    parse_heads,
    prune_checkpoint,
    prune_heads,
    validate_init,
)

__all__ = [
    "HardConcreteGate",
    "InitQualityCallback",
    "PruningCallback",
    "PruningConfig",
    "ablation_importance",
    "apply_mask",
    "attach_l0_gates",
    "build_pruning_callback",
    "compute_pruning_curve",
    "convert_to_gqa",
    "entropy_scores",
    "evaluate",
    "fold_l0_gates",
    "gradient_importance",
    "gradual_fraction",
    "head_scores",
    "iterative_counts",
    "load_init",
    "load_model",
    "load_module",
    "parse_heads",
    "plot_pruning_curves",
    "prune_checkpoint",
    "prune_heads",
    "random_scores",
    "role_scores",
    "select_heads",
    "validate_init",
    "validate_pruning",
    "write_curve_csv",
]
