"""The architecture options of ModelConfig (issue 30): each module against its formula written out by
hand, the defaults against numbers the model gave before the options existed, bad values through the
CLI, the presets trained through the CLI, and the model-reading code (pruning, GQA conversion, ablation)
on every family's options."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint
from mhaexp.config import CONF_DIR
from mhaexp.heads.importance import ablation_importance
from mhaexp.nn.attention import MultiHeadAttention, RotaryEmbedding
from mhaexp.nn.config import model_overrides
from mhaexp.nn.model import MLP, Block, ModelConfig, Transformer, make_norm
from mhaexp.nn.objectives import IGNORE, causal_lm_objective
from mhaexp.pruning.surgery import apply_mask, convert_to_gqa, prune_heads
from mhaexp.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT

V, T = 40, 10
PRESETS = ("gpt2_small", "llama_small", "qwen2_small", "pythia_small", "bert_small")
# Each family's options at a tiny size, as the presets set them (checked against the YAML below).
FAMILIES: dict[str, dict] = {
    "gpt2": dict(mlp="gelu_tanh"),
    "llama": dict(n_kv_heads=2, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False),
    "qwen2": dict(n_kv_heads=2, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True, norm_eps=1e-6),
    "pythia": dict(pos="rope", rotary_pct=0.25, parallel_residual=True, tie_embeddings=False),
    "bert": dict(causal=False, norm_position="post", norm_eps=1e-12, type_vocab_size=2, mlm_head=True),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread start-up and contention on a shared 2-core box cost far more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=V, n_layers=2, d_model=32, n_heads=4, d_ff=48, max_seq_len=16), **kw})


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn from N(0, 0.5): norms with non-unit weights, biases that are not zero, and
    activations out of their linear range, so a wrong formula shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


def batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, T, dtype=torch.bool)
    mask[0, 7:] = False
    return {"input_ids": torch.randint(0, V, (b, T), generator=g), "attention_mask": mask}


def logits(model: Transformer, data: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(data["input_ids"], attention_mask=data["attention_mask"])[0]


# ---------------------------------------------------------------------------------------------
# the defaults compute what the model computed before the options (commit 7fd8da8)
# ---------------------------------------------------------------------------------------------

BASE_CASES = {
    "default": {},
    "rope_gqa_unbiased_untied_encoder": dict(pos="rope", n_kv_heads=2, bias=False, tie_embeddings=False, causal=False),
    "attn_only_no_pos": dict(attn_only=True, pos="none"),
}
# fingerprint(**BASE_CASES[name]) computed by this same function on commit 7fd8da8, before the options.
BASE_FINGERPRINTS = {
    "default": ("4da5dd0c0b75ea54", 5417.82232080324, [3.9221456050872803, 3.6149299144744873, 3.2959301471710205]),
    "rope_gqa_unbiased_untied_encoder": (
        "cff9126457b61dad",
        3110.2637098060472,
        [3.8936314582824707, 3.5332236289978027, 3.3261563777923584],
    ),
    "attn_only_no_pos": (
        "173089ea8ab20d1c",
        1862.4934753306568,
        [3.891385078430176, 3.5403523445129395, 3.2834866046905518],
    ),
}


def fingerprint(**kw) -> tuple[str, float, list[float]]:
    """(digest of the state's names and shapes, a checksum of its values, the losses of 3 AdamW steps)
    of the seed-0 model: the layout old checkpoints load into, the weights a seed draws, the training."""
    cfg = ModelConfig(vocab_size=50, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_seq_len=16, **kw)
    torch.manual_seed(0)
    model = Transformer(cfg)
    state = model.state_dict()
    layout = hashlib.sha256(repr([(k, tuple(v.shape)) for k, v in state.items()]).encode()).hexdigest()[:16]
    checksum = sum((i + 1) * float(v.double().sum() + v.double().square().sum()) for i, v in enumerate(state.values()))
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        logits, _ = model(ids)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layout, checksum, losses


@pytest.mark.parametrize("name", list(BASE_CASES))
def test_default_options_give_the_weights_and_losses_of_before(name: str) -> None:
    layout, checksum, losses = fingerprint(**BASE_CASES[name])
    want_layout, want_checksum, want_losses = BASE_FINGERPRINTS[name]
    assert layout == want_layout  # the same parameter names and shapes, in the same order
    assert checksum == pytest.approx(want_checksum, rel=1e-12)  # the same draws of the same seed
    # The same function: only BLAS rounding on another CPU may differ (a changed model moves these by >1e-3).
    assert losses == pytest.approx(want_losses, rel=1e-6)


@pytest.mark.parametrize("kw", [dict(parallel_residual=True), dict(norm_eps=1e-3)])
def test_the_fingerprint_sees_an_option_change(kw: dict) -> None:
    """The check above can fail: options that keep every weight but change the function move the losses
    by far more than its tolerance. (Not ``mlp=gelu_tanh``: at the 0.02 init the MLP's inputs are so
    small that the two GELUs round to the same float32 losses.)"""
    layout, checksum, losses = fingerprint(**kw)
    want_layout, want_checksum, want_losses = BASE_FINGERPRINTS["default"]
    assert layout == want_layout and checksum == pytest.approx(want_checksum, rel=1e-12)
    assert max(abs(a - b) for a, b in zip(losses, want_losses, strict=True)) > 1e-3


# ---------------------------------------------------------------------------------------------
# each module against its formula
# ---------------------------------------------------------------------------------------------


def test_rmsnorm_is_weight_times_x_over_rms() -> None:
    """Zhang & Sennrich 2019; in fp32 exactly HF Llama's ``weight * x * rsqrt(mean(x^2) + eps)``."""
    norm = randomize(make_norm(tiny(norm="rmsnorm", norm_eps=1e-3)))
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # no bias, whatever `bias` says
    x = torch.randn(3, 5, 32) * 0.05  # small: eps = 1e-3 matters against mean(x^2) ~ 2.5e-3
    want = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3))
    torch.testing.assert_close(norm(x), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_takes_its_epsilon_and_bias(bias: bool) -> None:
    norm = randomize(make_norm(tiny(norm_eps=0.01, bias=bias)))
    x = torch.randn(3, 5, 32) * 0.1
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    want = (x - mu) / torch.sqrt(var + 0.01) * norm.weight + (norm.bias if bias else 0)
    assert (norm.bias is not None) == bias
    torch.testing.assert_close(norm(x), want, rtol=1e-5, atol=1e-6)


def gelu_erf(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))


def gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    """GPT-2's ``gelu_new`` (Hendrycks & Gimpel 2016, the tanh approximation)."""
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


@pytest.mark.parametrize(
    "kind, hand",
    [
        ("gelu", lambda m, x: linear(m.proj, gelu_erf(linear(m.fc, x)))),
        ("gelu_tanh", lambda m, x: linear(m.proj, gelu_tanh(linear(m.fc, x)))),
        # SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)), silu(g) = g * sigmoid(g).
        ("swiglu", lambda m, x: linear(m.proj, (lambda g: g * torch.sigmoid(g))(linear(m.gate, x)) * linear(m.fc, x))),
    ],
)
def test_mlp_kinds(kind: str, hand: Callable) -> None:
    mlp = randomize(MLP(tiny(mlp=kind)))
    x = torch.randn(2, 5, 32)
    assert (mlp.gate is not None) == (kind == "swiglu")
    torch.testing.assert_close(mlp(x), hand(mlp, x), rtol=1e-5, atol=1e-5)
    unbiased = MLP(tiny(mlp=kind, mlp_bias=False))
    assert all(not n.endswith("bias") for n, _ in unbiased.named_parameters())


def test_the_two_gelus_differ() -> None:
    """So the test above tells them apart: at the same weights they differ by far more than its tolerance."""
    exact, approx = randomize(MLP(tiny(mlp="gelu"))), randomize(MLP(tiny(mlp="gelu_tanh")))
    x = torch.randn(2, 5, 32) * 3
    assert float((exact(x) - approx(x)).abs().max()) > 1e-3


def rope_by_hand(x: torch.Tensor, head_dim: int, pct: float, base: float) -> torch.Tensor:
    """GPT-NeoX's partial rotary, one pair at a time: for ``dim = int(head_dim * pct)`` and
    ``half = ceil(dim / 2)``, dims ``i`` and ``i + half`` (i < half) turn by ``t * base^(-2i/dim)`` at
    position t; dims from ``2 * half`` on pass through."""
    dim = int(head_dim * pct)
    half = (dim + 1) // 2
    out = x.clone()
    for t in range(x.shape[-2]):
        for i in range(half):
            theta = t * base ** (-2 * i / dim)
            c, s = math.cos(theta), math.sin(theta)
            a, b = x[..., t, i], x[..., t, i + half]
            out[..., t, i] = a * c - b * s
            out[..., t, i + half] = b * c + a * s
    return out


@pytest.mark.parametrize("head_dim, pct, rotated", [(16, 1.0, 16), (16, 0.25, 4), (10, 0.5, 6), (12, 0.2, 2)])
def test_partial_rotary(head_dim: int, pct: float, rotated: int) -> None:
    rope = RotaryEmbedding(head_dim, max_seq_len=12, base=100.0, rotary_pct=pct)
    assert rope.n_rot == rotated
    x = torch.randn(2, 3, 12, head_dim)
    got = rope(x)
    torch.testing.assert_close(got, rope_by_hand(x, head_dim, pct, 100.0), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[..., rotated:], x[..., rotated:])  # the rest passes untouched


@pytest.mark.parametrize("causal", [True, False])
def test_attention_paths_agree_with_partial_rotary_and_split_biases(causal: bool) -> None:
    """SDPA (training) and the explicit softmax (analysis) compute one function with every new option."""
    attn = MultiHeadAttention(32, 4, 2, head_dim=12, causal=causal, rope=True, rotary_pct=0.25, o_bias=False)
    randomize(attn)
    assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    fast, _ = attn(x, key_padding_mask=mask)
    explicit, pattern = attn(x, need_weights=True, key_padding_mask=mask)
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 9))


def test_parallel_residual_block() -> None:
    """GPT-NeoX: x + attn(ln_1(x)) + mlp(ln_2(x)), both branches reading the block's input."""
    block = randomize(Block(tiny(parallel_residual=True), 0))
    x = torch.randn(2, 7, 32)
    want = x + block.attn(block.ln_1(x))[0] + block.mlp(block.ln_2(x))
    torch.testing.assert_close(block(x)[0], want, rtol=1e-5, atol=1e-5)
    block.parallel = False  # the same weights run sequentially compute something else
    assert float((block(x)[0] - want).abs().max()) > 1e-3


def test_post_ln_block() -> None:
    """BERT: h = ln_1(x + attn(x)); out = ln_2(h + mlp(h))."""
    block = randomize(Block(tiny(norm_position="post", causal=False), 0))
    x = torch.randn(2, 7, 32)
    h = block.ln_1(x + block.attn(x)[0])
    torch.testing.assert_close(block(x)[0], block.ln_2(h + block.mlp(h)), rtol=1e-5, atol=1e-5)


def test_bert_model_by_hand() -> None:
    """Embeddings tok + type + pos, normed; post-LN blocks; no final norm; the MLM head
    ``norm(gelu(dense(h))) @ W_E^T + b`` with the decoder tied to the token embedding."""
    model = randomize(Transformer(tiny(**FAMILIES["bert"])))
    assert model.ln_f is None and model.lm_head.weight is model.tok_emb.weight and model.lm_head.bias is not None
    ids = torch.randint(0, V, (2, T))
    types = (torch.arange(T) >= 4).long().expand(2, T)  # segment A then segment B
    x = model.tok_emb.weight[ids] + model.type_emb.weight[types] + model.pos_emb.weight[:T]
    x = model.emb_norm(x)
    for block in model.blocks:
        x = block(x)[0]
    head = model.mlm_head
    want = head.norm(gelu_erf(linear(head.dense, x))) @ model.tok_emb.weight.T + model.lm_head.bias
    with torch.no_grad():
        got = model(ids, token_type_ids=types)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # No token types means segment 0 everywhere, and the segment changes the output.
        torch.testing.assert_close(model(ids)[0], model(ids, token_type_ids=torch.zeros_like(ids))[0])
        assert float((model(ids)[0] - got).abs().max()) > 1e-3


@pytest.mark.parametrize(
    "kw, qkv, o, mlp, norm",
    [
        (dict(), True, True, True, True),
        (dict(bias=False), False, False, False, False),
        (dict(bias=False, qkv_bias=True), True, False, False, False),  # Qwen2
        (dict(o_bias=False, mlp_bias=False), True, False, False, True),
    ],
)
def test_biases_are_set_separately(kw: dict, qkv: bool, o: bool, mlp: bool, norm: bool) -> None:
    block = Transformer(tiny(**kw)).blocks[0]
    assert (block.attn.qkv_proj.bias is not None, block.attn.o_proj.bias is not None) == (qkv, o)
    assert (block.mlp.fc.bias is not None, block.mlp.proj.bias is not None) == (mlp, mlp)
    assert (block.ln_1.bias is not None) == norm


def test_presets_set_the_families_options() -> None:
    """The tiny families used here are the presets' options (so what is tested here is what trains)."""
    for family, options in FAMILIES.items():
        preset = yaml.safe_load((CONF_DIR / "model" / f"{family}_small.yaml").read_text())
        parent = preset["defaults"][0]
        if parent != "small":
            preset = {**yaml.safe_load((CONF_DIR / "model" / f"{parent}.yaml").read_text()), **preset}
        for key, value in options.items():
            assert preset[key] == value, (family, key)


# ---------------------------------------------------------------------------------------------
# bad values: one line through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["model.norm=batchnorm"], "model.norm='batchnorm' is invalid: choose one of ['layernorm', 'rmsnorm']"),
        (["model.mlp=relu"], "model.mlp='relu' is invalid: choose one of ['gelu', 'gelu_tanh', 'swiglu']"),
        (["model.norm_position=sandwich"], "model.norm_position='sandwich' is invalid: choose one of ['pre', 'post']"),
        (["model.norm_eps=0"], "model.norm_eps=0 is invalid: must be a number > 0"),
        (["model.rotary_pct=0.25"], "model.rotary_pct=0.25 is invalid: needs model.pos=rope (it is 'learned')"),
        (["model.rotary_pct=1.5"], "model.rotary_pct=1.5 is invalid: must be in (0, 1]"),
        (
            ["model.pos=rope", "model.rotary_pct=0.05"],
            "model.rotary_pct=0.05 is invalid: would rotate 0 of head_dim=16 dimensions (int(head_dim * rotary_pct) "
            "rounded up to even); needs at least 2 and at most head_dim",
        ),
        (
            ["model.parallel_residual=true", "model.norm_position=post"],
            "model.parallel_residual=True is invalid: needs model.norm_position=pre (GPT-NeoX is pre-LN)",
        ),
        (["model.qkv_bias=maybe"], "model.qkv_bias='maybe' is invalid: must be true or false, or null"),
        (["model.type_vocab_size=-1"], "model.type_vocab_size=-1 is invalid: must be an integer >= 0"),
    ],
)
def test_bad_option_is_one_line(cli: Callable, tmp_path: Path, overrides: list[str], line: str) -> None:
    proc = cli("mhaexp-train", *overrides, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"mhaexp-train: error: {line}"]
    assert not list(tmp_path.glob("runs")) and not list(tmp_path.glob("outputs"))  # nothing half-written


# ---------------------------------------------------------------------------------------------
# the presets train through the CLI, and their parameter counts are right
# ---------------------------------------------------------------------------------------------


def preset_params(preset: str, vocab: int) -> int:
    """Each preset's parameters written out from its shape (d 128, 3 layers, 8 heads of 16, 64 positions)."""
    d, L, f, pos = 128, 3, 512, 64 * 128
    gelu_mlp = L * (2 * d * f + f + d)
    mha_biased = L * 4 * (d * d + d)
    layernorms = (2 * L + 1) * 2 * d  # two per block, plus the final one (BERT: the embeddings' instead)
    llama_attn = L * (d * (8 + 2 * 2) * 16 + d * d)  # q 8 heads, k and v 2 heads each, o_proj; no bias
    swiglu = L * 3 * d * 344
    rmsnorms = (2 * L + 1) * d
    return {
        "gpt2_small": vocab * d + pos + mha_biased + gelu_mlp + layernorms,
        "llama_small": vocab * d + llama_attn + swiglu + rmsnorms + vocab * d,  # untied
        "qwen2_small": vocab * d + llama_attn + L * (8 + 2 * 2) * 16 + swiglu + rmsnorms,  # qkv biases, tied
        "pythia_small": vocab * d + mha_biased + gelu_mlp + layernorms + vocab * d,  # untied, no position table
        # token types (2), and the MLM head: dense with bias, LayerNorm, the decoder's bias.
        "bert_small": vocab * d + 2 * d + pos + mha_biased + gelu_mlp + layernorms + (d * d + d) + 2 * d + vocab,
    }[preset]


@pytest.fixture(scope="module")
def preset_sweep(tmp_path_factory: pytest.TempPathFactory, tiny: list[str], cli: Callable) -> dict[str, Path]:
    """One sweep trains every preset a few dozen steps: {preset: its run directory}."""
    cwd = tmp_path_factory.mktemp("presets")
    rest = [o for o in tiny if not o.startswith("model=")]
    proc = cli("mhaexp-train", "-m", *rest, f"model={','.join(PRESETS)}", cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = [status.parent for status in cwd.glob("multirun/*/*/*/status.json")]
    assert len(jobs) == len(PRESETS), jobs
    return {p: next(d for d in jobs if f"_{p}_" in d.name) for p in PRESETS}  # the job's name carries its model


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_through_the_cli(preset_sweep: dict[str, Path], preset: str) -> None:
    run = preset_sweep[preset]
    val = [float(r["val/loss"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/loss")]
    assert len(val) >= 3 and val[-1] < val[0] - 0.2, val  # it learns
    summary = json.loads((run / "summary.json").read_text())
    vocab = read_checkpoint(run / CHECKPOINT_DIR / LAST_CHECKPOINT)[CHECKPOINT_KEY]["model"]["vocab_size"]
    assert summary["params/total"] == preset_params(preset, vocab)


def test_info_counts_a_preset(cli: Callable, tmp_path: Path) -> None:
    proc = cli("mhaexp-info", "model=bert_small", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.startswith("  "))
    assert "post-norm layernorm, gelu MLP, sequential residual, MLM head" in proc.stdout
    vocab = (int(lines["embedding"].replace(",", "")) - 2 * 128) // 128  # token rows and 2 type rows of d = 128
    assert int(lines["lm_head"].replace(",", "")) == 128 * 128 + 128 + 2 * 128 + vocab
    assert int(lines["total"].replace(",", "")) == preset_params("bert_small", vocab)


# ---------------------------------------------------------------------------------------------
# what reads models keeps working: pruning, GQA conversion, ablation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_masked_and_pruned_agree_in_every_family(family: str) -> None:
    model = randomize(Transformer(tiny(**FAMILIES[family])), seed=1)
    heads = [(0, 1), (1, 0), (1, 1)]
    apply_mask(model, heads)
    small, report = prune_heads(model, heads)
    assert report.params_after < report.params_before
    torch.testing.assert_close(logits(small, batch()), logits(model, batch()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gqa_conversion_in_every_family(family: str) -> None:
    model = randomize(Transformer(tiny(**{**FAMILIES[family], "n_kv_heads": 4})), seed=2)
    same = convert_to_gqa(model, 4)  # as many K/V heads as before: the same function
    torch.testing.assert_close(logits(same, batch()), logits(model, batch()), rtol=1e-5, atol=1e-5)
    grouped = convert_to_gqa(model, 2)
    assert [a.n_kv_heads for a in grouped.attention_layers] == [2, 2]
    assert grouped.cfg.norm == model.cfg.norm and grouped.cfg.mlp == model.cfg.mlp  # the options carry over
    assert torch.isfinite(logits(grouped, batch())).all()


def mean_loss(model: Transformer, batches: list[dict[str, torch.Tensor]]) -> float:
    total = count = 0.0
    with torch.no_grad():
        for b in batches:
            x, y = causal_lm_objective(b)
            out = model(x, attention_mask=b["attention_mask"])[0]
            total += float(F.cross_entropy(out.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"))
            count += float((y != IGNORE).sum())
    return total / count


@pytest.mark.parametrize("family", ["pythia", "bert", "llama"])
def test_ablation_matches_one_forward_per_head(family: str) -> None:
    """Ablation reuses the block's attention input and the model's unembedding: right for post-LN and
    parallel blocks and the MLM head too (scored with next-token targets: any fixed targets do)."""
    model = randomize(Transformer(tiny(**FAMILIES[family])), seed=3)
    held_out = [batch(seed=1), batch(seed=2)]
    base = mean_loss(model, held_out)
    got = ablation_importance(model, held_out, max_rows=6)
    for i, layer in enumerate(model.attention_layers):
        for h in range(layer.n_heads):
            apply_mask(model, [(i, h)])
            want = mean_loss(model, held_out) - base
            layer.head_gate[h] = 1.0
            assert float(got[i][h]) == pytest.approx(want, abs=1e-4)


def test_init_from_refuses_weights_made_for_other_options(
    preset_sweep: dict[str, Path], cli: Callable, tmp_path: Path
) -> None:
    """GPT-2's weights fit the default model's shapes exactly, but its MLP is the tanh GELU: loading them
    into model=small would train another function, so the option is named instead."""
    ckpt = preset_sweep["gpt2_small"] / CHECKPOINT_DIR / LAST_CHECKPOINT
    proc = cli("mhaexp-train", f"init_from={ckpt}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mhaexp-train: error: model.mlp='gelu' is invalid: the weights in {ckpt} were made for "
        "model.mlp='gelu_tanh'; set that"
    ]
    assert not list(tmp_path.glob("runs"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_fine_tuning_hint_rebuilds_the_model(family: str, compose) -> None:
    """mhaexp-prune's "fine-tune it with" line spells every model field (model_overrides): composed by
    Hydra over the default model, they rebuild the pruned model of each family, per-layer heads included."""
    cfg = tiny(**FAMILIES[family], layer_n_heads=[4, 2])
    from omegaconf import OmegaConf

    composed = OmegaConf.to_container(compose(model_overrides(cfg)).model, resolve=True)
    assert ModelConfig(**{**composed, "vocab_size": V}) == cfg
    assert "model.mlm_head=true" in model_overrides(tiny(**FAMILIES["bert"]))


def test_every_layer_reads_one_rotary_table() -> None:
    """RoPE's cos/sin tables are built once per model, not once per layer: at a long context (32768
    positions, 128-wide heads) each copy is 32 MiB. Moving the model moves the one table."""
    model = Transformer(tiny(**FAMILIES["pythia"], n_layers=3, layer_n_heads=[4, 2, 3]))
    tables = {(b.attn.rotary.cos.data_ptr(), b.attn.rotary.sin.data_ptr()) for b in model.blocks}
    assert len(tables) == 1
    assert sum(1 for name, _ in model.named_buffers() if name.endswith((".cos", ".sin"))) == 2
    double = model.to(torch.float64)  # a move converts the one module once: the layers still share it
    assert len({id(b.attn.rotary.cos) for b in double.blocks}) == 1
    assert double.blocks[2].attn.rotary.cos.dtype == torch.float64
    assert len({id(b.attn.rotary) for b in Transformer(tiny(**FAMILIES["llama"])).blocks}) == 1
    assert all(b.attn.rotary is None for b in Transformer(tiny()).blocks)  # learned positions: no table
