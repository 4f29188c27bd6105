"""An imported model through the model-side tools: pruned with ``mhaexp-prune``, converted to GQA with
``gqa_init``, uptrained through ``init_from`` on a text corpus (Ainslie et al. 2023's setting), and pruned
during training under every schedule."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
from mhaexp.cli import import_model, prune
from mhaexp.data.tokenizers import load_saved_tokenizer
from mhaexp.nn.config import model_overrides
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
    return model_overrides(load_model(ckpt).cfg)


def test_prune_convert_to_gqa_and_uptrain(imported: Path, cli) -> None:
    root = imported.parent
    lines = prune.run([f"ckpt={imported}", "heads=L0H1", f"out={root / 'pruned.ckpt'}"])
    assert "L0: heads 4 -> 3" in lines and " model.mlp=gelu_tanh " in lines  # GPT-2's GELU carried into the hint
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


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Pythia (GPT-NeoX) whose embedding table is padded to a multiple of 64 past its
    tokenizer's vocabulary, as Pythia's 50277 tokens sit in 50304 rows; imported, with a corpus beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("padded")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    )
    end = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end)
    rows = -(-len(fast) // 64) * 64
    assert rows > len(fast)
    config = GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=rows,
        bos_token_id=0,
        eos_token_id=0,
    )
    save_random_hf(config, root / "hf", std=0.3)
    fast.save_pretrained(str(root / "hf"))
    (root / "corpus").mkdir()
    (root / "corpus" / "a.txt").write_text("\n".join(TEXT))
    import_model.run([f"source={root / 'hf'}", f"out={root / 'pythia.ckpt'}"])
    return root / "pythia.ckpt"


def test_a_model_padded_past_its_tokenizer_fine_tunes_on_it_and_analyzes(padded: Path, cli) -> None:
    """Fine-tuning Pythia through its own tokenizer: the run keeps the checkpoint's padded table (the
    padding's logits stay in the softmax, so the loss before the first step is the source's to the last
    bit), and the fine-tuned checkpoint analyzes with the data it was trained on."""
    root = padded.parent
    tokenizer = padded.with_name("pythia.tokenizer")
    rows, n_tokens = load_model(padded).cfg.vocab_size, load_saved_tokenizer(tokenizer).vocab_size
    assert rows > n_tokens == read_checkpoint(padded)["hyper_parameters"]["data_vocab_size"]
    run_dir = root / "finetune"
    r = cli(
        "mhaexp-train",
        f"init_from={padded}",
        *model_words(padded),
        *TRAIN,
        f"data.path={root / 'corpus'}",
        f"data.tokenizer={tokenizer}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        f"hydra.run.dir={run_dir}",
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    init = json.loads((run_dir / "init_conversion.json").read_text())
    assert init["init/converted_val_loss"] == init["init/source_val_loss"]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load_model(last).cfg.vocab_size == rows  # the padding kept, and the vocabulary it was made for
    assert read_checkpoint(last)["hyper_parameters"]["data_vocab_size"] == n_tokens
    a = cli("mhaexp-analyze", f"ckpt={last}", "probe_sequences=4", f"out={root / 'analysis'}", cwd=root)
    assert a.returncode == 0, a.stderr
    assert (root / "analysis" / "head_metrics.csv").is_file()


def test_a_data_vocabulary_the_model_was_not_made_for_is_refused(padded: Path, cli) -> None:
    """More ids than the table has rows (or fewer than the tokenizer it was made for): one line, exit 2."""
    root = padded.parent
    rows = load_model(padded).cfg.vocab_size
    for vocab in (rows + 36, 270):
        r = cli(
            "mhaexp-train",
            f"init_from={padded}",
            *model_words(padded),
            *TRAIN,
            f"data.path={root / 'corpus'}",
            "data.tokenizer=bpe",
            f"data.vocab_size={vocab}",
            f"hydra.run.dir={root / 'refused'}",
            cwd=root,
        )
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "init_from=" in r.stderr and f"the data's has {vocab}" in r.stderr, r.stderr
        assert f"data.tokenizer={padded.with_name('pythia.tokenizer')}" in r.stderr, r.stderr
    assert not (root / "refused" / "checkpoints").exists()


@pytest.mark.parametrize("how", [["heads=L0H1"], ["n_kv_heads=2"]], ids=["prune", "convert"])
def test_the_printed_fine_tune_command_runs(padded: Path, how: list[str], cli) -> None:
    """The command ``mhaexp-prune`` prints for an imported model runs as printed, once its corpus is filled
    in (only the run's size is added): shape, architecture and the model's own tokenizer all in it."""
    root = padded.parent
    out = root / f"{how[0].split('=')[0]}.ckpt"
    hint = prune.run([f"ckpt={padded}", *how, f"out={out}"]).splitlines()[-1]
    assert hint.startswith("fine-tune it with: mhaexp-train ")
    words = shlex.split(hint.removeprefix("fine-tune it with: "))
    assert f"data.path={prune.CORPUS_PLACEHOLDER}" in words and "model.rotary_pct=0.25" in words
    tokenizer = padded.with_name("pythia.tokenizer").resolve()
    assert f"data.tokenizer={tokenizer}" in words
    meta = read_checkpoint(out)[CHECKPOINT_KEY]  # the output still knows its tokenizer, wherever it is written
    assert meta["tokenizer"] == str(tokenizer) and meta["imported"]["model_type"] == "gpt_neox"
    words = [w.replace(prune.CORPUS_PLACEHOLDER, str(root / "corpus")) for w in words]
    run_dir = root / f"hint-{out.stem}"
    size = ["data.seq_len=16", "data.batch_size=4", "analysis=off", "trainer.max_steps=2"]
    r = cli(*words, *size, "trainer.val_check_interval=2", f"hydra.run.dir={run_dir}", cwd=root)
    assert r.returncode == 0, r.stderr
    trained = load_model(run_dir / "checkpoints" / "last.ckpt").cfg
    assert trained == load_model(out).cfg  # the shape it was pruned or converted to, the padded table kept


def test_masked_lm_random_replacements_are_tokens_of_the_data() -> None:
    """BERT's 10% random replacements come from the ids the data's tokenizer produces, never from the rows
    padded past it (HF's collator draws from len(tokenizer) too)."""
    import torch

    from mhaexp.nn.config import ModelConfig
    from mhaexp.training.module import LMModule

    cfg = ModelConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, causal=False, mlm_head=True)
    ids = torch.full((64, 32), 5)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    inputs = {}
    for n in (None, 10):
        module = LMModule(cfg, {}, mask_id=1, mlm_probability=1.0, data_vocab_size=n)
        inputs[n], _ = module.inputs_and_targets(batch, salt=0)
    random10, random_all = (t[(t != 1) & (t != 5)] for t in (inputs[10], inputs[None]))  # neither mask nor original
    assert int(random10.max()) < 10 and int(random_all.max()) >= 10
    with pytest.raises(ValueError, match="data_vocab_size=65"):
        LMModule(cfg, {}, data_vocab_size=65)
