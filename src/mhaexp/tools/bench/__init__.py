"""``python -m mhaexp.tools.bench``: our attention layer and model against plain references, side by side.

One module per part:

* :mod:`~mhaexp.tools.bench.harness`: results (:class:`Row`), the section registry, timing (the device
  sync, interleaved blocks, CUDA-event medians), the measured matmul peak, and the driver.
* :mod:`~mhaexp.tools.bench.reference`: the nanoGPT-style references, the steps timed on them, the shapes.
* one module per section: ``attention``, ``gqa``, ``train``, ``analysis``, ``pruning``, ``sweep``,
  ``data``, ``model_import`` (section ``import``), ``tlens``.
* :mod:`~mhaexp.tools.bench.gpu_check`: the GPU check (``make gpu-check``), the same harness and sections
  at a GPU's sizes (or ``--tiny``, on the CPU), with pass/fail checks and issue 14's targets.

A section is added with ``@register("name")`` (see :mod:`~mhaexp.tools.bench.harness`).
"""

from mhaexp.tools.bench.harness import (
    SECTION_MODULES,
    SECTIONS,
    Args,
    Row,
    main,
    ratio_row,
    register,
    resolve_sections,
    spread,
    time_interleaved,
    time_row,
)

__all__ = [
    "SECTIONS",
    "SECTION_MODULES",
    "Args",
    "Row",
    "main",
    "ratio_row",
    "register",
    "resolve_sections",
    "spread",
    "time_interleaved",
    "time_row",
]
