"""``trainer.compile``: the training/validation forward runs compiled, everything else sees the eager model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mhaexp import ConfigError, ModelConfig
from mhaexp.nn.io import load_model
from mhaexp.training.config import TrainerConfig
from mhaexp.training.module import LMModule


def batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, vocab, (4, 12), generator=g), "attention_mask": torch.ones(4, 12)}


def test_compiled_steps_follow_gates_and_the_model_stays_eager() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=32, max_seq_len=16)
    module = LMModule(cfg, {}, compile=True).eval()
    eager = LMModule(cfg, {}).eval()
    eager.model.load_state_dict(module.model.state_dict())
    data = batch(40)
    with torch.no_grad():
        assert module.forward_fn() is not module.model  # the compiled wrapper
        assert eager.forward_fn() is eager.model
        torch.testing.assert_close(module.loss_and_accuracy(data, 0), eager.loss_and_accuracy(data, 0))
        before = module.loss_and_accuracy(data, 0)[0]
        for m in (module, eager):  # masking a head mid-training: a buffer edit the compiled graph must see
            m.model.attention_layers[1].head_gate[2] = 0.0
        masked = module.loss_and_accuracy(data, 0)[0]
        assert abs(float(masked - before)) > 1e-4
        torch.testing.assert_close(masked, eager.loss_and_accuracy(data, 0)[0])
        # Forward hooks (ablation importance) and need_weights patterns go through the eager model.
        seen: list[torch.Size] = []
        hook = module.model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
        _, patterns = module.model(data["input_ids"], need_weights=True)
        hook.remove()
        assert seen == [torch.Size([4, 12, 32])] and patterns[1].shape == (4, 4, 12, 12)
    assert not any("compiled" in k or "_orig_mod" in k for k in module.state_dict())  # checkpoints unchanged
    old = module.forward_fn()
    module.model = eager.model  # surgery that swaps the model gets a wrapper of the new one
    assert module.forward_fn() is not old and module.forward_fn() is module.forward_fn()
    assert "compile" not in module.hparams  # a run setting: a checkpoint does not carry it


def test_compile_on_cpu_needs_a_cpp_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    TrainerConfig(compile=True)  # this machine has one
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    TrainerConfig(compile=False)
    with pytest.raises(ConfigError, match=r"^trainer.compile=True is invalid: .*C\+\+ compiler"):
        TrainerConfig(compile=True)


@pytest.mark.slow
def test_compiled_run_analyses_prunes_and_matches_eager(cli: Callable, tmp_path: Path, tiny: list[str]) -> None:
    """Analysis (need_weights patterns, gate gradients, ablation hooks) and one-shot pruning mid-training,
    then physical removal, with trainer.compile=true: the same heads go and the same loss comes out."""
    run = [o for o in tiny if o != "analysis=off"] + [
        "analysis.every_n_steps=10",
        "pruning=one_shot",
        "pruning.at_step=10",
        "trainer.max_steps=20",
        "logger=csv",
    ]
    out = {}
    for flag in ("false", "true"):
        cwd = tmp_path / flag
        cwd.mkdir()
        done = cli("mhaexp-train", *run, f"trainer.compile={flag}", cwd=cwd, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        run_dir = next(cwd.glob("runs/*/*"))
        out[flag] = (
            json.loads((run_dir / "summary.json").read_text()),
            json.loads((run_dir / "pruning.json").read_text()),
            run_dir,
        )
    (s_e, p_e, _), (s_c, p_c, dir_c) = out["false"], out["true"]
    assert p_c["pruned"] == p_e["pruned"] and p_c["pruned"]
    assert s_c["best_val_loss"] == pytest.approx(s_e["best_val_loss"], abs=1e-4)
    assert (dir_c / "analysis" / "index.html").is_file()
    small = load_model(dir_c / "pruned.ckpt")
    assert sum(a.n_heads for a in small.attention_layers) < 2 * 4
