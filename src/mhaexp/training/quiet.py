"""A job prints our lines, not Lightning's start-up chatter.

Lightning announces at every ``Trainer`` construction which accelerators exist ("GPU available:
False", "TPU available"), advertises other products ("💡 Tip: ... litlogger"), and reports why fit
stopped; our closing report already says where the run went and how it ended. Those are INFO
records of its ``rank_zero`` loggers; its warnings (``rank_zero_warn``, the ``warnings`` module) are
untouched, so anything a user can act on still shows.
"""

from __future__ import annotations

import logging

CHATTY_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def quiet_lightning() -> None:
    """Keep Lightning's INFO chatter out of the job's output (warnings and errors still show)."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
