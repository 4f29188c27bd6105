"""Regenerates ``analysis_reference.pt``: the per-head metrics of the full-pattern analysis (commit cde12a0,
before streaming), the reference ``tests/test_analysis_stream.py`` compares the streamed analysis with.

Run from the repository root: ``PYTHONPATH=src python tests/data/make_analysis_reference.py``. Only rerun it
on purpose (it is the "before" of a refactoring); the models and probe are rebuilt in the test the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import yaml

from mhaexp.analysis.collect import compute_head_metrics, probe_from_datamodule
from mhaexp.data import LMDataModule
from mhaexp.nn.model import ModelConfig, Transformer

ROOT = Path(__file__).resolve().parents[2]
DATA = {"kind": "grammar", "seq_len": 37, "batch_size": 64, "n_train": 2000, "n_val": 64, "n_probe": 128, "seed": 0}
SHARPEN = 6.0  # q/k scale of the second model: peaked patterns whose argmaxes mean something
# conf/analysis/default.yaml with the settings the stored reference was made with (the default since changed).
PINNED = {"induction_sequences": 32}


def analysis_settings() -> dict:
    return {**yaml.safe_load((ROOT / "conf" / "analysis" / "default.yaml").read_text()), **PINNED}


def models(vocab_size: int) -> dict[str, Transformer]:
    raw = yaml.safe_load((ROOT / "conf" / "model" / "small.yaml").read_text())
    kw = {k: v for k, v in raw.items() if k in ModelConfig.__dataclass_fields__ and k != "max_seq_len"}
    out = {}
    for name, scale in (("init", 1.0), ("sharp", SHARPEN)):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**kw, vocab_size=vocab_size, max_seq_len=64))
        with torch.no_grad():
            for attn in model.attention_layers:
                q, k, _ = attn.split_qkv(attn.qkv_proj.weight)  # views into the fused weight
                q.mul_(scale)
                k.mul_(scale)
        out[name] = model.eval()
    return out


def snapshot(hm) -> dict:
    return {
        "metrics": {k: v.clone() for k, v in hm.metrics.items()},
        "layer_metrics": {k: v.clone() for k, v in hm.layer_metrics.items()},
        "js": hm.js,
        "mds": hm.mds,
        "example_patterns": [p.clone() for p in hm.example_patterns],
        "n_heads": hm.n_heads,
        "relation_names": hm.relation_names,
        "syntactic_direction": hm.syntactic_direction,
    }


def main() -> None:
    cfg = analysis_settings()
    with tempfile.TemporaryDirectory() as tmp:
        dm = LMDataModule(**DATA, cache_dir=tmp)
        dm.prepare_data()
        probe = probe_from_datamodule(dm, 128)
        ref = {}
        for name, model in models(dm.vocab_size).items():
            torch.manual_seed(0)
            ref[name] = snapshot(compute_head_metrics(model, probe, cfg, expensive=True))
    torch.save(ref, Path(__file__).with_name("analysis_reference.pt"))


if __name__ == "__main__":
    main()
