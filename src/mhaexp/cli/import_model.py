"""``mhaexp-import``: a pretrained Hugging Face model as an ordinary mhaexp checkpoint, tokenizer beside it.

Usage::

    mhaexp-import source=gpt2 out=gpt2.ckpt                                   # hub name: needs the network
    mhaexp-import source=EleutherAI/pythia-70m revision=step1000 out=p70m-1000.ckpt
    mhaexp-import source=path/to/save_pretrained_dir out=model.ckpt           # local directory: offline
    mhaexp-import source=mistralai/Mistral-7B-v0.1 max_seq_len=4096 out=m.ckpt

Keys: ``source`` (required: a local ``save_pretrained`` directory, or a hub name), ``out`` (required),
``revision`` (a hub branch, tag or commit; Pythia's ``step1000`` ... also sets the checkpoint's step),
``max_seq_len`` (default: the model's ``max_position_embeddings``; smaller tables, and the way to
import a sliding-window model for sequences within its window).

Families: GPT-2, BERT (masked LM), Llama (Mistral, TinyLlama, SmolLM), Qwen2, GPT-NeoX/Pythia
(:mod:`mhaexp.nn.hf_import`). The checkpoint is read by ``mhaexp-analyze ckpt=``, ``mhaexp-prune
ckpt=``, ``mhaexp-train init_from=`` and ``mhaexp.load_model``. The tokenizer is saved in
``<out stem>.tokenizer/`` (the checkpoint names it), with the roles mhaexp frames sequences with
(BOS, EOS, PAD, MASK, UNK) given to tokens it already has (BERT: ``[CLS]`` ... ``[SEP]``), so the
vocabulary stays the model's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from mhaexp.errors import ConfigError, key_value_args, key_value_main

PROG = "mhaexp-import"
KEYS = ("source", "out", "revision", "max_seq_len")
TOKENIZER_SUFFIX = ".tokenizer"  # <out stem>.tokenizer/ beside the checkpoint
# Files a hub download needs besides the weights: the config and the tokenizer's files.
HUB_PATTERNS = ["*.json", "*.model", "*.txt", "vocab.*"]
# A directory holds a tokenizer when it has one of these (AutoTokenizer builds an empty one otherwise).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")
STEP_REVISION = re.compile(r"^step(\d+)$")  # Pythia's training-checkpoint branches


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` words -> dict; ConfigError for anything else or a missing required key."""
    args = key_value_args(argv, KEYS)
    for key, example in (("source", "source=gpt2 or source=path/to/dir"), ("out", "out=model.ckpt")):
        if not args.get(key):
            raise ConfigError(key, None, f"required ({example})")
    if "max_seq_len" in args and not args["max_seq_len"].isdigit():
        raise ConfigError("max_seq_len", args["max_seq_len"], "must be a positive integer")
    return args


def local_directory(source: str, revision: str | None) -> Path:
    """``source`` as a local directory: itself, or the hub snapshot (downloaded when reachable)."""
    from mhaexp.data.tokenizers import hub_endpoint, hub_reachable

    path = Path(source).expanduser()
    if path.is_dir():
        if revision:
            raise ConfigError("revision", revision, "applies to hub names; a local directory is imported as it is")
        return path
    if path.exists():
        raise ConfigError("source", source, "is a file; give a save_pretrained directory or a hub model name")
    from huggingface_hub import snapshot_download

    from mhaexp.nn.hf_import import WEIGHT_PATTERNS, weight_files

    def fetch(weights: str, offline: bool) -> Path:
        patterns = [*HUB_PATTERNS, weights]
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns, local_files_only=offline))

    for offline in (True, False):  # the HF cache first; then the hub, when it can be reached
        if not offline and not hub_reachable():
            raise ConfigError(
                "source",
                source,
                f"not a local directory, not in the HF cache, and the hub ({hub_endpoint()}) cannot be reached "
                "(offline?); give a save_pretrained directory",
            )
        for weights in WEIGHT_PATTERNS:  # safetensors when the repo has them, else the .bin files
            try:
                directory = fetch(weights, offline)
            except Exception as e:  # noqa: BLE001 - not cached, or a wrong name or revision
                if offline:
                    break
                first = (str(e).strip().splitlines() or [""])[0]
                raise ConfigError("source", f"{source}@{revision}" if revision else source, first) from None
            if weight_files(directory):
                return directory
    raise ConfigError("source", source, f"the repository has no weights ({' or '.join(WEIGHT_PATTERNS)})")


def framed_tokenizer(directory: Path) -> Any | None:
    """The directory's tokenizer with mhaexp's five roles given to tokens it has; None if it has none."""
    from transformers import AutoTokenizer

    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None  # a model saved without its tokenizer: imported without one
    try:
        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - whatever the library says, the source's tokenizer is unusable
        first = (str(e).strip().splitlines() or [""])[0]
        why = f"its tokenizer cannot be loaded ({type(e).__name__}: {first})"
        raise ConfigError("source", str(directory), why) from None
    fallbacks = {
        "bos_token": ("bos_token", "cls_token", "eos_token"),
        "eos_token": ("eos_token", "sep_token", "bos_token"),
        "pad_token": ("pad_token", "eos_token", "sep_token"),
        "unk_token": ("unk_token", "eos_token", "sep_token"),
        "mask_token": ("mask_token", "unk_token", "eos_token"),
    }
    roles = {}
    for role, names in fallbacks.items():
        token = next((getattr(tok, n) for n in names if getattr(tok, n, None) is not None), None)
        if token is None:
            raise ConfigError("source", str(directory), f"its tokenizer has no token to serve as {role}")
        if getattr(tok, role, None) is None:
            roles[role] = token
    if roles:
        size = len(tok)
        tok.add_special_tokens(roles)
        if len(tok) != size:  # only tokens it had were named: the vocabulary must stay the model's
            raise ConfigError("source", str(directory), f"giving its tokenizer the roles {roles} grew its vocabulary")
    return tok


def save_beside(tok: Any, out: Path) -> Path:
    """Save ``tok`` as a saved mhaexp tokenizer in ``<out stem>.tokenizer/``, replacing an older one whole."""
    from mhaexp.data.tokenizers import HFTokenizer, save_tokenizer

    target = out.with_name(out.stem + TOKENIZER_SUFFIX)
    tmp = out.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    save_tokenizer(HFTokenizer(str(tmp), "source"), tmp)  # adds mhaexp's description of the directory
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def run(argv: list[str]) -> str:
    """Do what ``argv`` asks; return the lines to print."""
    import transformers

    from mhaexp.checkpoint import atomic_save
    from mhaexp.nn.hf_import import import_hf_directory
    from mhaexp.nn.io import checkpoint_for

    args = parse_args(argv)
    source, out = args["source"], Path(args["out"])
    revision = args.get("revision")
    directory = local_directory(source, revision)
    max_seq_len = int(args["max_seq_len"]) if "max_seq_len" in args else None
    model, hf = import_hf_directory(directory, source, max_seq_len)
    tok = framed_tokenizer(directory)
    if tok is not None and len(tok) > model.cfg.vocab_size:
        raise ConfigError("source", source, f"its tokenizer has {len(tok)} tokens, the model {model.cfg.vocab_size}")
    step = STEP_REVISION.match(revision or "")
    meta: dict[str, Any] = {
        "imported": {
            "source": source,
            "revision": revision,
            "model_type": hf["model_type"],
            "transformers_version": transformers.__version__,
        },
        "tokenizer": None,
    }
    hparams = {
        "pad_id": int(tok.pad_token_id) if tok is not None else 0,
        "mask_id": int(tok.mask_token_id) if tok is not None else None,
        # The ids its tokenizer produces: the embedding table may be padded past them (Pythia, Qwen2).
        "data_vocab_size": len(tok) if tok is not None else None,
    }
    lines = []
    if tok is not None:
        meta["tokenizer"] = save_beside(tok, out).name  # written first: the checkpoint is the last file
        lines.append(f"tokenizer: {out.with_name(meta['tokenizer'])} ({len(tok)} tokens)")
    else:
        lines.append("tokenizer: none in the source; give data.tokenizer= to mhaexp-analyze")
    ckpt = checkpoint_for(model, hparams=hparams, extra=meta)
    ckpt["global_step"] = int(step.group(1)) if step else 0
    atomic_save(ckpt, out)
    cfg = model.cfg
    kv = f"/{cfg.n_kv_heads} K/V" if cfg.n_kv_heads != cfg.n_heads else ""
    return "\n".join(
        [
            f"imported {source}{'@' + revision if revision else ''} ({hf['model_type']}): {cfg.n_layers} layers, "
            f"{cfg.n_heads}{kv} heads of {cfg.head_dim}, d_model {cfg.d_model}, "
            f"{model.param_counts()['total']} parameters",
            f"wrote {out}",
            *lines,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    key_value_main(PROG, __doc__, run, argv)


if __name__ == "__main__":
    main()
