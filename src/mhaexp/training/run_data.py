"""The data config of the run a checkpoint belongs to, read the way the run read its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mhaexp.data.tokenizers import is_saved_tokenizer
from mhaexp.rundir import TOKENIZER_DIR, job_config_path


def run_data_node(ckpt: Path) -> Any:
    """The ``data`` node of ``<run>/.hydra/config.yaml`` for ``<run>/checkpoints/x.ckpt`` (or ``<run>/x.ckpt``),
    still attached to its run's config (interpolations such as ``n_probe`` resolve there); None when the
    checkpoint sits in no run directory.

    A text run reads its data with the tokenizer the run saved (``<run>/tokenizer``): a trained BPE
    then never needs retraining, and the ids are those the checkpoint learned.
    """
    from omegaconf import OmegaConf, open_dict

    for run_dir in (ckpt.parent.parent, ckpt.parent):
        config = job_config_path(run_dir)
        if config.is_file():
            node = OmegaConf.load(config).get("data")
            if node is not None:
                saved = run_dir / TOKENIZER_DIR
                if node.get("kind") == "text" and is_saved_tokenizer(saved):
                    with open_dict(node):
                        node.tokenizer = str(saved.resolve())
                return node
    return None
