"""Published head-specialization studies, reproduced at small scale, each ending in verdicts.

``mhaexp-study <name>`` (or ``experiments/<name>.sh``) trains what the study needs, measures, and writes
``studies/<name>/verdict.json`` and ``report.md``. :data:`STUDIES` names every study and its module; a
module defines ``STUDY``, an instance of :class:`mhaexp.studies.base.Study`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mhaexp.studies.base import Study

STUDIES: dict[str, str] = {
    "ainslie2023": "mhaexp.studies.ainslie2023",
    "clark2019": "mhaexp.studies.clark2019",
    "gu2024": "mhaexp.studies.gu2024",
    "head_count": "mhaexp.studies.head_count",
    "michel2019": "mhaexp.studies.michel2019",
    "olsson2022": "mhaexp.studies.olsson2022",
    "seed_table": "mhaexp.studies.seed_table",
    "voita2019": "mhaexp.studies.voita2019",
    "wu2024": "mhaexp.studies.wu2024",
}


def get_study(name: str) -> Study:
    return importlib.import_module(STUDIES[name]).STUDY


def model_studies() -> list[str]:
    """The studies that take ``--model <source>`` (the paper measured a pretrained model)."""
    return [name for name in STUDIES if get_study(name).takes_model]
