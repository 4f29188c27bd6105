"""An imported model through the model-side tools: pruned with ``mhaexp-prune``, converted to GQA with
``gqa_init``, uptrained through ``init_from`` on a text corpus (Ainslie et al. 2023's setting), and pruned
during training under every schedule."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from mhaexp.cli import import_model, prune
from mhaexp.nn.io import load_model
from mhaexp.tools.import_parity import save_random_hf

TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird sang in the tree while the cat slept on the warm mat",
] * 30
TRAIN = ["data=text", "data.seq_len=16", "data.batch_size=4", "analysis=off", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init GPT-2 with a byte-level BPE, imported; its embedding table as large as its tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("pretrained")
    source = root / "hf"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    )
    end = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=len(fast), bos_token_id=0, eos_token_id=0
    )
    save_random_hf(config, source, std=0.3)
    fast.save_pretrained(str(source))
    (root / "corpus").mkdir()
    (root / "corpus" / "a.txt").write_text("\n".join(TEXT))
    import_model.run([f"source={source}", f"out={root / 'gpt2.ckpt'}"])
    return root / "gpt2.ckpt"


def model_words(ckpt: Path) -> list[str]:
    """``model.<field>=<value>`` for every field of the checkpoint's model (the vocabulary comes from the data)."""
    words = []
    for f in fields(cfg := load_model(ckpt).cfg):
        value = getattr(cfg, f.name)
        if value is None or f.name in ("vocab_size", "extra"):
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = "[" + ",".join(map(str, value)) + "]"
        words.append(f"model.{f.name}={value}")
    return words


def test_prune_convert_to_gqa_and_uptrain(imported: Path, cli) -> None:
    root = imported.parent
    lines = prune.run([f"ckpt={imported}", "heads=L0H1", f"out={root / 'pruned.ckpt'}"])
    assert "L0: heads 4 -> 3" in lines and "model.mlp=gelu_tanh" in lines  # GPT-2's GELU carried into the hint
    lines = prune.run([f"ckpt={root / 'pruned.ckpt'}", "n_kv_heads=1", "gqa_init=mean", f"out={root / 'gqa.ckpt'}"])
    assert "converted K/V heads" in lines and "(mean)" in lines
    gqa = load_model(root / "gqa.ckpt").cfg
    assert (gqa.layer_n_heads, gqa.layer_n_kv_heads) == ([3, 4], [1, 1])

    run_dir = root / "uptrain"
    words = [*TRAIN, f"data.path={root / 'corpus'}", f"data.tokenizer={imported.with_name('gpt2.tokenizer')}"]
    r = cli(
        "mhaexp-train",
        f"init_from={root / 'gqa.ckpt'}",
        *model_words(root / "gqa.ckpt"),
        *words,
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        f"hydra.run.dir={run_dir}",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    init = json.loads((run_dir / "init_conversion.json").read_text())
    assert init["init_from"] == str(root / "gqa.ckpt") and init["kv_heads_after"] == [1, 1]
    trained = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert (trained.cfg.layer_n_heads, trained.cfg.layer_n_kv_heads) == ([3, 4], [1, 1])
    start = load_model(root / "gqa.ckpt").state_dict()
    moved = [k for k, v in trained.state_dict().items() if k in start and not v.equal(start[k])]
    assert "blocks.0.attn.qkv_proj.weight" in moved  # the uptraining changed the converted weights


@pytest.mark.parametrize(
    "schedule",
    [
        ["pruning=one_shot", "pruning.at_step=0", "pruning.count=2"],
        ["pruning=iterative", "pruning.at_step=0"],
        ["pruning=gradual", "pruning.start_step=0", "pruning.end_step=4", "pruning.every=2"],
        ["pruning=l0"],
    ],
    ids=["one_shot", "iterative", "gradual", "l0"],
)
def test_every_pruning_schedule_runs_on_an_imported_model(imported: Path, schedule: list[str], cli) -> None:
    root = imported.parent
    run_dir = root / f"prune-{schedule[0].split('=')[1]}"
    r = cli(
        "mhaexp-train",
        f"init_from={imported}",
        *model_words(imported),
        *TRAIN,
        f"data.path={root / 'corpus'}",
        f"data.tokenizer={imported.with_name('gpt2.tokenizer')}",
        *schedule,
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
        f"hydra.run.dir={run_dir}",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    assert (run_dir / "pruning.json").is_file() and (run_dir / "pruning_curve.csv").is_file()
    pruned = load_model(run_dir / "pruned.ckpt").cfg  # the heads removed, GPT-2's architecture kept
    heads = pruned.layer_n_heads or [pruned.n_heads] * pruned.n_layers
    assert pruned.mlp == "gelu_tanh" and sum(heads) <= 8
    if schedule[0] == "pruning=one_shot":
        assert sum(heads) == 6  # pruning.count=2
