"""``mhaexp-import``: local save_pretrained directories in, ordinary checkpoints out, the tokenizer carried;
what would compute something else is refused in one line. Offline: models and tokenizers are built here."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
from mhaexp.cli import import_model
from mhaexp.data.tokenizers import load_saved_tokenizer
from mhaexp.errors import ConfigError
from mhaexp.nn.hf_import import hf_model_config, read_hf_config
from mhaexp.nn.io import load_model
from mhaexp.tools.import_parity import save_random_hf

TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird sang in the tree while the cat slept on the warm mat",
    "the dog chased the cat around the garden and back to the house",
] * 20


def gpt2_tokenizer(directory: Path) -> object:
    """A byte-level BPE with GPT-2's one special token, wrapped and saved as transformers would."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    end = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end)
    fast.save_pretrained(str(directory))
    return fast


def bert_tokenizer(directory: Path) -> object:
    """A WordPiece with BERT's specials, normalizer and [CLS] ... [SEP] template, saved as transformers would."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TEXT, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, tok.token_to_id(s)) for s in ("[CLS]", "[SEP]")]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(str(directory))
    return fast


def hf_dir(tmp_path: Path, family: str, tokenizer=None, **config: object) -> Path:
    """A random-init HF model of ``family`` saved with ``save_pretrained`` (and a tokenizer, if given)."""
    from transformers import AutoConfig

    directory = tmp_path / f"hf-{family}"
    directory.mkdir()
    vocab = 320  # larger than the tokenizers: embedding tables padded past the vocabulary, as Pythia's
    small = {
        "gpt2": dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
        "bert": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64),
        "llama": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=64),
        "gpt_neox": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64),
        "qwen2": dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=64),
    }[family]  # fmt: skip
    save_random_hf(AutoConfig.for_model(family, vocab_size=vocab, **{**small, **config}), directory)
    if tokenizer is not None:
        tokenizer(directory)
    return directory


def config_only(tmp_path: Path, family: str, **config: object) -> Path:
    """A directory holding only a config.json (refusals happen before any weight is read)."""
    from transformers import AutoConfig

    directory = tmp_path / f"cfg-{family}"
    AutoConfig.for_model(family, **config).save_pretrained(str(directory))
    return directory


def test_gpt2_tokenizer_round_trips_through_import_and_analyze(tmp_path: Path, cli) -> None:
    source = hf_dir(tmp_path, "gpt2", gpt2_tokenizer)
    out = tmp_path / "imported" / "gpt2.ckpt"
    r = cli("python", "-m", "mhaexp.cli.import_model", f"source={source}", f"out={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "imported" in r.stdout and "(gpt2): 2 layers, 4 heads of 8, d_model 32" in r.stdout
    saved = out.with_name("gpt2.tokenizer")
    assert f"tokenizer: {saved}" in r.stdout
    meta = read_checkpoint(out)[CHECKPOINT_KEY]
    assert meta["tokenizer"] == "gpt2.tokenizer" and meta["imported"]["model_type"] == "gpt2"

    # The saved tokenizer is the source's, ids and pieces alike, and every role is a token it had.
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(str(source))
    carried = load_saved_tokenizer(saved)
    sentence = "the cat sat on the warm log"
    assert carried.encode(sentence) == original(sentence, add_special_tokens=False)["input_ids"]
    assert carried.vocab_size == len(original) < 320
    end = original.convert_tokens_to_ids("<|endoftext|>")
    assert (carried.bos_id, carried.eos_id, carried.pad_id, carried.mask_id, carried.unk_id) == (end,) * 5

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXT))
    a = cli(
        "mhaexp-analyze",
        f"ckpt={out}",
        f"data.path={corpus}",
        "data.seq_len=16",
        "data.batch_size=4",
        "probe_sequences=4",
        f"text={sentence}",
        cwd=tmp_path,
    )
    assert a.returncode == 0, a.stderr
    assert "on data=text" in a.stdout and "(text=)" in a.stdout
    page = (out.parent / "analysis-gpt2" / "head_view.html").read_text()
    pieces = original.convert_ids_to_tokens(original(sentence, add_special_tokens=False)["input_ids"])
    assert any(p.startswith("Ġ") for p in pieces)  # byte-level pieces carry their space as Ġ
    assert all(json.dumps(p)[1:-1] in page for p in pieces)


def test_bert_import_frames_with_cls_and_sep_and_keeps_its_vocabulary(tmp_path: Path) -> None:
    source = hf_dir(tmp_path, "bert", bert_tokenizer)
    out = tmp_path / "bert.ckpt"
    lines = import_model.run([f"source={source}", f"out={out}"])
    assert "(bert): 2 layers, 4 heads of 8" in lines
    tok = load_saved_tokenizer(out.with_name("bert.tokenizer"))
    assert tok.id_to_token(tok.bos_id) == "[CLS]" and tok.id_to_token(tok.eos_id) == "[SEP]"
    assert tok.id_to_token(tok.mask_id) == "[MASK]" and tok.id_to_token(tok.pad_id) == "[PAD]"
    hp = read_checkpoint(out)["hyper_parameters"]
    assert (hp["pad_id"], hp["mask_id"]) == (tok.pad_id, tok.mask_id)
    model = load_model(out)
    assert model.cfg.causal is False and model.cfg.mlm_head and model.cfg.norm_position == "post"


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "qwen2", "gpt_neox"])
def test_every_family_imports_to_a_checkpoint_load_model_reads(tmp_path: Path, family: str) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    source = hf_dir(tmp_path, family)
    out = tmp_path / "m.ckpt"
    lines = import_model.run([f"source={source}", f"out={out}"])
    assert "tokenizer: none in the source" in lines
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    hf = auto.from_pretrained(str(source), attn_implementation="eager").eval()
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(0))
    from mhaexp import load_model as public_loader

    assert public_loader is load_model  # `from mhaexp import load_model`: the one loader
    with torch.no_grad():
        ref = hf(ids).logits
        ours, _ = public_loader(out)(ids)
    assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-5


def test_pythia_step_revision_and_a_shorter_max_seq_len(tmp_path: Path) -> None:
    source = hf_dir(tmp_path, "gpt2")
    out = tmp_path / "short.ckpt"
    import_model.run([f"source={source}", f"out={out}", "max_seq_len=16"])
    model = load_model(out)
    assert model.cfg.max_seq_len == 16 and model.pos_emb.weight.shape == (16, 32)
    with pytest.raises(ConfigError, match="max_seq_len.*must be in 1..64"):
        import_model.run([f"source={source}", f"out={out}", "max_seq_len=65"])
    with pytest.raises(ConfigError, match="revision.*applies to hub names"):
        import_model.run([f"source={source}", f"out={out}", "revision=step1000"])
    assert import_model.STEP_REVISION.match("step143000").group(1) == "143000"


def test_transformers_4x_config_names_read_the_same(tmp_path: Path) -> None:
    """A config.json as transformers 4.x wrote it (rotary_pct, rotary_emb_base, rope_theta at the top,
    no rope_parameters) gives the model 5.x's names give."""
    neox = config_only(tmp_path, "gpt_neox", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                       intermediate_size=128, vocab_size=100, rope_parameters={"rope_type": "default",
                       "rope_theta": 500.0, "partial_rotary_factor": 0.5})  # fmt: skip
    llama = config_only(tmp_path, "llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        num_hidden_layers=2, intermediate_size=128, vocab_size=100,
                        rope_parameters={"rope_type": "default", "rope_theta": 250.0})  # fmt: skip
    new = [hf_model_config(read_hf_config(d, str(d)), str(d)) for d in (neox, llama)]
    for d, old_names in ((neox, {"rotary_pct": 0.5, "rotary_emb_base": 500.0}), (llama, {"rope_theta": 250.0})):
        raw = json.loads((d / "config.json").read_text())
        raw.pop("rope_parameters")
        raw.update(old_names, rope_scaling=None, transformers_version="4.44.0")
        (d / "config.json").write_text(json.dumps(raw))
    old = [hf_model_config(read_hf_config(d, str(d)), str(d)) for d in (neox, llama)]
    assert old == new
    assert (new[0].rotary_pct, new[0].rope_base, new[1].rope_base) == (0.5, 500.0, 250.0)
    assert (new[1].n_kv_heads, new[1].norm, new[1].mlp) == (2, "rmsnorm", "swiglu")


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        ("mixtral", {}, "model_type 'mixtral' has a mixture-of-experts (MoE) block"),
        ("t5", {}, "model_type 't5' is not supported; supported: bert, gpt2, gpt_neox, llama, mistral, qwen2"),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_position_embeddings": 64},
         "sliding-window attention (window 16)"),
        ("mistral", {"sliding_window": 32, "max_position_embeddings": 64}, "pass max_seq_len=32 or less"),
        ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
         "RoPE scaling 'linear'"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=true"),
        ("gpt2", {"activation_function": "relu"}, "activation 'relu'"),
        ("bert", {"is_decoder": True}, "is_decoder=true"),
    ],
)  # fmt: skip
def test_what_would_compute_something_else_is_refused(tmp_path: Path, family: str, config: dict, message: str):
    if family in ("mixtral", "t5"):
        directory = tmp_path / family
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({"model_type": family}))
    else:
        directory = config_only(tmp_path, family, **config)
    out = tmp_path / "never.ckpt"
    with pytest.raises(ConfigError) as e:
        import_model.run([f"source={directory}", f"out={out}"])
    assert message in str(e.value) and e.value.field == "source"
    assert not out.exists() and not out.with_name("never.tokenizer").exists()


def test_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, cli) -> None:
    directory = config_only(tmp_path, "gpt2", scale_attn_by_inverse_layer_idx=True)
    out = tmp_path / "never.ckpt"
    r = cli("python", "-m", "mhaexp.cli.import_model", f"source={directory}", f"out={out}", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "source" in r.stderr and "scale_attn_by_inverse_layer_idx" in r.stderr
    assert list(tmp_path.iterdir()) == [directory]
    off = cli(
        "python", "-m", "mhaexp.cli.import_model", "source=nobody/no-such-model", f"out={out}",
        cwd=tmp_path, extra_env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert off.returncode == 2 and "cannot be reached" in off.stderr and len(off.stderr.strip().splitlines()) == 1


def _rewrite_safetensors(path: Path, drop: str | None = None, add: str | None = None) -> None:
    """Rewrite a safetensors file without tensor ``drop`` or with an extra tensor ``add``."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    if drop:
        tensors.pop(drop)
    if add:
        tensors[add] = torch.zeros(3)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    source = hf_dir(tmp_path, "llama")
    weights = source / "model.safetensors"
    _rewrite_safetensors(weights, drop="model.layers.1.self_attn.k_proj.weight")
    with pytest.raises(ConfigError, match="its weights lack layers.1.self_attn.k_proj.weight"):
        import_model.run([f"source={source}", f"out={tmp_path / 'x.ckpt'}"])
    (tmp_path / "b").mkdir()
    source = hf_dir(tmp_path / "b", "gpt_neox")
    _rewrite_safetensors(source / "model.safetensors", add="gpt_neox.layers.0.attention.extra_gate")
    with pytest.raises(ConfigError, match="1 tensor.*does not map .first: gpt_neox.layers.0.attention.extra_gate"):
        import_model.run([f"source={source}", f"out={tmp_path / 'x.ckpt'}"])
    header_len = struct.unpack("<Q", (source / "model.safetensors").read_bytes()[:8])[0]
    (source / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[: 8 + header_len + 10])
    with pytest.raises(ConfigError, match="truncated"):
        import_model.run([f"source={source}", f"out={tmp_path / 'x.ckpt'}"])
    assert not (tmp_path / "x.ckpt").exists()


def test_an_imported_checkpoint_prunes_and_converts_like_a_trained_one(tmp_path: Path) -> None:
    from mhaexp.pruning.surgery import convert_to_gqa, prune_checkpoint

    source = hf_dir(tmp_path, "llama")
    out = tmp_path / "llama.ckpt"
    import_model.run([f"source={source}", f"out={out}"])
    report = prune_checkpoint(out, [(0, 0), (0, 1)], tmp_path / "pruned.ckpt")  # layer 0's first K/V group
    pruned = load_model(tmp_path / "pruned.ckpt").cfg
    assert report.removed == [(0, 0), (0, 1)] and (pruned.layer_n_heads, pruned.layer_n_kv_heads) == ([2, 4], [1, 2])
    mqa = convert_to_gqa(load_model(out), 1)
    assert mqa.cfg.n_kv_heads == 1 and mqa.cfg.norm == "rmsnorm" and mqa.cfg.mlp == "swiglu"


def test_a_pytorch_model_bin_directory_imports_the_same_model(tmp_path: Path) -> None:
    """Older hub revisions (Pythia's step branches among them) carry only pytorch_model.bin."""
    from safetensors.torch import load_file

    source = hf_dir(tmp_path, "gpt_neox")
    # Another *.safetensors beside the model's own (Mistral repos ship consolidated.safetensors) is not read.
    (source / "consolidated.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100])
    import_model.run([f"source={source}", f"out={tmp_path / 'st.ckpt'}"])
    torch.save(load_file(str(source / "model.safetensors")), source / "pytorch_model.bin")
    (source / "model.safetensors").unlink()
    import_model.run([f"source={source}", f"out={tmp_path / 'bin.ckpt'}"])
    a, b = (load_model(tmp_path / name).state_dict() for name in ("st.ckpt", "bin.ckpt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rss_file() -> int:
    """This process's resident file-backed memory in bytes (mapped file pages, /proc/self/status)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")
def test_a_bin_source_gives_back_its_mapped_pages_as_it_is_copied(tmp_path: Path) -> None:
    """A memory-mapped ``pytorch_model.bin`` counts in the resident memory as its pages are read: copied
    into the model and then released, a 64 MiB tensor leaves (almost) nothing resident, where holding
    its pages would add all 64 MiB (the import's peak would be the model plus the whole file)."""
    from mhaexp.nn.hf_import import HFWeights

    weight = torch.randn(4096, 4096)  # 64 MiB
    torch.save({"gpt_neox.embed_in.weight": weight}, tmp_path / "pytorch_model.bin")
    weights = HFWeights(tmp_path, "gpt_neox.", "bin")
    dst = torch.empty_like(weight)
    dst.fill_(0.0)  # the destination's own pages are anonymous memory, not RssFile
    before = _rss_file()
    weights.copy_into("embed_in.weight", dst)
    grown = _rss_file() - before
    assert torch.equal(dst, weight)
    assert grown < 8 << 20, f"{grown / 2**20:.1f} MiB of the file stayed resident"
    t = weights.read("embed_in.weight")
    assert float(t.sum()) == float(weight.sum())  # reading it whole maps every page again ...
    assert _rss_file() - before > 48 << 20
    weights.release()  # ... and release gives them back
    assert _rss_file() - before < 8 << 20
