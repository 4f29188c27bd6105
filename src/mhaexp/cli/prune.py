"""``mhaexp-prune``: physically remove heads from a checkpoint, or convert its K/V heads (GQA/MQA).

Usage::

    mhaexp-prune ckpt=runs/.../last.ckpt heads=L0H1,L1H3 out=small.ckpt
    mhaexp-prune ckpt=runs/.../last.ckpt heads=0:1,1:3            # out defaults to <ckpt>_pruned.ckpt
    mhaexp-prune ckpt=runs/.../last.ckpt                          # remove the heads masked in it
    mhaexp-prune ckpt=mha.ckpt n_kv_heads=2 gqa_init=mean out=gqa.ckpt   # Ainslie et al. 2023, no uptraining

Keys: ``ckpt`` (required), ``heads`` (``L0H1,L1H3`` or ``0:1,1:3``; default: heads whose gate is 0
in the checkpoint), ``out``, ``uneven`` (``pad`` | ``split``, how unequal GQA groups are kept
valid; see :mod:`mhaexp.pruning.surgery`), ``n_kv_heads`` and ``gqa_init`` (``mean`` | ``first`` |
``random``) for K/V conversion. The output loads with ``LMModule.load_from_checkpoint`` or
``mhaexp.load_model`` and trains with ``mhaexp-train init_from=<out>`` and the model's shape, which
the printed fine-tuning command spells out in full (``model.*``; for an imported model also its
tokenizer, ``data=text data.tokenizer=...``, and a ``data.path=path/to/corpus`` to fill in).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from mhaexp.errors import ConfigError, key_value_args, key_value_main
from mhaexp.rundir import check_output_file

PROG = "mhaexp-prune"
CORPUS_PLACEHOLDER = "path/to/corpus"  # an imported model comes with a tokenizer but no corpus
KEYS = ("ckpt", "heads", "out", "uneven", "n_kv_heads", "gqa_init", "seed")


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` words -> dict; ConfigError for anything else."""
    args = key_value_args(argv, KEYS)
    if "ckpt" not in args:
        raise ConfigError("ckpt", None, "required: the checkpoint to prune (ckpt=path/to/last.ckpt)")
    return args


def fine_tune_hint(out: Path, cfg: Any, tokenizer: Path | None) -> str:
    """The ``mhaexp-train`` command that fine-tunes ``out`` (model ``cfg``), shell-quoted: every
    ``model.*`` field, and an imported model's text data through its own ``tokenizer``."""
    from mhaexp.nn.config import model_overrides

    words = ["mhaexp-train", f"init_from={out}", *model_overrides(cfg)]
    if tokenizer is not None:
        words += ["data=text", f"data.tokenizer={tokenizer.resolve()}", f"data.path={CORPUS_PLACEHOLDER}"]
    return f"fine-tune it with: {shlex.join(words)}"


def run(argv: list[str]) -> str:
    """Do what ``argv`` asks; return the lines to print."""
    from mhaexp.checkpoint import atomic_save, read_checkpoint
    from mhaexp.nn.io import checkpoint_for, load_model, provenance, saved_tokenizer
    from mhaexp.pruning import surgery

    args = parse_args(argv)
    src = args["ckpt"]
    if "n_kv_heads" in args:
        if "heads" in args:
            raise ConfigError("heads", args["heads"], "prune and convert in two calls (n_kv_heads is also given)")
        try:
            n_kv = int(args["n_kv_heads"])
        except ValueError:
            raise ConfigError("n_kv_heads", args["n_kv_heads"], "must be an integer") from None
        out = Path(args.get("out") or Path(src).with_name(Path(src).stem + f"_kv{n_kv}.ckpt"))
        check_output_file(out, "out")
        ckpt = read_checkpoint(src, "ckpt")
        tokenizer = saved_tokenizer(ckpt, src)
        model = load_model(src)
        new = surgery.convert_to_gqa(model, n_kv, args.get("gqa_init", "mean"), int(args.get("seed", 0)))
        meta = {"converted_from": src, "gqa_init": args.get("gqa_init", "mean"), **provenance(ckpt, src)}
        atomic_save(checkpoint_for(new, ckpt, extra=meta), out)
        return (
            f"converted K/V heads {model.cfg.n_kv_heads} -> {n_kv} ({meta['gqa_init']}); "
            f"parameters {model.param_counts()['total']} -> {new.param_counts()['total']}\nwrote {out}\n"
            + fine_tune_hint(out, new.cfg, tokenizer)
        )
    heads = surgery.parse_heads(args["heads"]) if args.get("heads") else None
    out = Path(args.get("out") or Path(src).with_name(Path(src).stem + "_pruned.ckpt"))
    if out.resolve() == Path(src).resolve():
        raise ConfigError("out", str(out), "must differ from ckpt (the source is kept)")
    check_output_file(out, "out")
    report = surgery.prune_checkpoint(src, heads, out, args.get("uneven", "pad"))
    tokenizer = saved_tokenizer(read_checkpoint(src, "ckpt", mmap=True), src)
    cfg = load_model(out).cfg
    lines = [
        f"removed {len(report.removed)} head(s): {surgery.format_heads(report.removed) or '(none)'}",
        report.summary(),
        f"wrote {out}",
        fine_tune_hint(out, cfg, tokenizer),
    ]
    if report.padded:
        lines.insert(
            1,
            f"note: {len(report.padded)} removed head(s) stay in the file gated 0 so that every GQA group "
            "keeps the same size (uneven=split duplicates K/V heads instead)",
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    key_value_main(PROG, __doc__, run, argv)


if __name__ == "__main__":
    main()
