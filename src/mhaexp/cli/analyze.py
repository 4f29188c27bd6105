"""``mhaexp-analyze``: the training-time head analysis, offline, on a saved checkpoint.

Usage::

    mhaexp-analyze ckpt=runs/.../checkpoints/last.ckpt                   # probe data of the run, or data=grammar
    mhaexp-analyze ckpt=last.ckpt data=induction out=induction_analysis
    mhaexp-analyze ckpt=last.ckpt conllu=treebank.conllu                 # score heads on your own sentences
    mhaexp-analyze ckpt=last.ckpt probe_sequences=512 thresholds.positional=0.8
    mhaexp-analyze ckpt=last.ckpt conllu=treebank.conllu treebank_max_sentences=500   # the first 500 only
    mhaexp-analyze ckpt=last.ckpt text="the cat that sat on the mat was fluffy"   # head view of a sentence
    mhaexp-analyze ckpt=gpt2.ckpt data.path=corpus.txt text="the cat sat"   # a model from mhaexp-import
    mhaexp-analyze series=runs/a/checkpoints/step250.ckpt,runs/a/checkpoints/last.ckpt out=timeline
    mhaexp-analyze series=pythia/step1000,pythia/step2000 data.path=corpus.txt   # save_pretrained dirs
    mhaexp-analyze series=EleutherAI/pythia-70m@step1000,step2000,step4000 data.path=corpus.txt  # network

Keys: ``ckpt`` or ``series`` (one of them: a series of checkpoints, run directories, save_pretrained
directories, or ``<hub name>@step1000,step2000``, each analysed the same way into one ``out`` (default
``analysis-series``) at its training step: one ``head_metrics.csv``, one ``head_roles_history.csv`` and the
role timeline ``role_timeline.png``; see :mod:`mhaexp.cli.series` for where each step is read and what is
refused), ``data`` (a ``conf/data`` choice; default: the run's own data config when the checkpoint sits in a
run directory, read with the tokenizer the run saved, else ``grammar``; it also gives the tokenizer; a
checkpoint from ``mhaexp-import`` reads ``data=text`` with the tokenizer saved beside it unless
``data.tokenizer`` is given), ``conllu`` (a CoNLL-U treebank used as the probe set instead of the data's: its
sentences are tokenized as the model's tokenizer reads running text, arcs are scored on word-level attention,
and a per-relation table is printed and written to ``treebank_relations.csv``; every sentence of the file
is scored, or the first ``treebank_max_sentences``), ``out`` (default ``<ckpt
dir>/analysis-<ckpt name>``), ``text`` (a sentence for the head view, tokenized with the model's tokenizer,
framed by BOS/EOS as the data frames its sequences; default: the first probe sequence). Any other
``key=value`` is an override of the composed ``conf/train.yaml``; keys of ``conf/analysis`` may drop the
``analysis.`` prefix.

Writes into ``out`` what training writes into ``<run>/analysis``: ``head_metrics.csv``,
``head_roles.csv`` (= ``head_roles_history.csv``, one step), ``summary.json``, the PNGs,
``analysis.md``, ``head_view.html`` and ``index.html`` (see :mod:`mhaexp.analysis.export`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mhaexp.errors import ConfigError, key_value_main
from mhaexp.rundir import (
    ANALYSIS_DIR,
    ANALYSIS_REPORT_FILE,
    HEAD_METRICS_FILE,
    HEAD_ROLES_HISTORY_FILE,
    TREEBANK_RELATIONS_FILE,
    check_output_dir,
)

PROG = "mhaexp-analyze"
OWN_KEYS = ("ckpt", "series", "data", "conllu", "out", "text")


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(our keys, Hydra overrides); ConfigError for a word that is not key=value or a missing ckpt."""
    from mhaexp.analysis.config import REPLACED_KEYS
    from mhaexp.config import CONF_DIR

    analysis_keys = _analysis_keys(CONF_DIR / ANALYSIS_DIR / "default.yaml")
    own: dict[str, str] = {}
    overrides: list[str] = []
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError("argument", word, f"write key=value (keys {', '.join(OWN_KEYS)} or config overrides)")
        prefix = key[0] if key[0] in "+~" else ""
        bare = key[len(prefix) :]
        if key in OWN_KEYS:
            own[key] = value
        elif bare.split(".")[0] in analysis_keys or bare.split(".")[0] in REPLACED_KEYS:
            overrides.append(f"{prefix}analysis.{bare}={value}")
        else:
            overrides.append(word)
    if bool(own.get("ckpt")) == bool(own.get("series")):
        raise ConfigError(
            "ckpt",
            own.get("ckpt"),
            "give one checkpoint (ckpt=path/to/last.ckpt) or a series (series=a.ckpt,b.ckpt), not both",
        )
    return own, overrides


def _analysis_keys(path: Path) -> set[str]:
    import yaml

    return set(yaml.safe_load(path.read_text()) or {})


def compose(own: dict[str, str], overrides: list[str], imported_tokenizer: Path | None = None) -> Any:
    """The composed train config with ``data=`` and the overrides applied; ConfigError for bad ones.

    An imported checkpoint (``mhaexp-import``) reads text (``data=text`` unless given) with the
    tokenizer saved beside it (``imported_tokenizer``) unless ``data.tokenizer`` is given.
    """
    from hydra.errors import HydraException
    from omegaconf import open_dict

    from mhaexp.cli.preflight import check_override_names, compose_job, hydra_context
    from mhaexp.training.run_data import run_data_node

    data = own.get("data") or ("text" if imported_tokenizer is not None else None)
    words = ([f"data={data}"] if data else []) + overrides
    with hydra_context():
        check_override_names(words, "train")
        try:
            cfg = compose_job(words)
        except HydraException as e:
            raise ConfigError("override", " ".join(words), str(e).splitlines()[0]) from None
    user_data = any(w.split("=")[0].lstrip("+~").split(".")[0] == "data" for w in words)
    run_data = None if user_data else run_data_node(Path(own["ckpt"]))
    if run_data is not None:
        with open_dict(cfg):
            cfg.data = run_data
    keys = {w.split("=")[0].lstrip("+~") for w in words}
    if imported_tokenizer is not None and cfg.data.kind == "text" and "data.tokenizer" not in keys:
        with open_dict(cfg):
            cfg.data.tokenizer = str(imported_tokenizer.resolve())
    return cfg


def conllu_probe(path: str, module: Any, tokenizer: Any, batch_size: int, acfg: Any) -> tuple[Any, Any]:
    """Probe batches from a CoNLL-U file as ``tokenizer`` (the model's) reads its sentences (all of them,
    or the first ``treebank_max_sentences``); the treebank."""
    from mhaexp.analysis.collect import objective_for
    from mhaexp.analysis.treebank_scores import treebank_probe
    from mhaexp.data.treebank import load_treebank

    limit = acfg.treebank_max_sentences
    tb = load_treebank(path, tokenizer, module.model.cfg.max_seq_len, "conllu", limit=limit, min_arcs=acfg.min_arcs)
    return treebank_probe(tb, tokenizer, batch_size, objective_for(module)), tb


def _check_vocabulary(datamodule: Any, bounds: tuple[int, int], kind: str) -> None:
    fewest, rows = bounds  # mhaexp.nn.io.data_vocab_bounds: an imported table may be padded past its tokenizer
    if not fewest <= datamodule.vocab_size <= rows:
        valid = f"{rows}" if fewest == rows else f"{fewest}..{rows}"
        raise ConfigError(
            "data",
            kind,
            f"its vocabulary has {datamodule.vocab_size} tokens, the checkpoint's model was made for "
            f"{valid}: pass the data= it was trained on",
        )


def encode_text(text: str, tokenizer: Any, max_seq_len: int) -> dict[str, Any]:
    """``text`` as a one-sequence batch: BOS + tokens + EOS, as the datamodules frame sequences."""
    import torch

    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError("text", text, 'is empty; give a sentence, e.g. text="the cat sat on the mat"')
    ids = [tokenizer.bos_id, *ids, tokenizer.eos_id]
    if len(ids) > max_seq_len:
        raise ConfigError("text", text, f"is {len(ids)} tokens with BOS/EOS; the model takes at most {max_seq_len}")
    t = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": t, "attention_mask": torch.ones_like(t, dtype=torch.bool)}


def run(argv: list[str]) -> str:
    """Do what ``argv`` asks; return the lines to print."""
    own, overrides = parse_args(argv)
    if own.get("series"):
        return run_series(own, overrides)
    ckpt_path = Path(own["ckpt"])
    out = Path(own.get("out") or ckpt_path.parent / f"analysis-{ckpt_path.stem}")
    check_output_dir(out, "out")  # before the work, not at the first write
    return "\n".join(analyse(ckpt_path, own, overrides, out, None, fresh=True, pictures=True))


def heads_per_layer(ckpt_path: Path) -> tuple[int, ...]:
    """The attention heads of each layer of a checkpoint's model."""
    from mhaexp.checkpoint import read_checkpoint
    from mhaexp.nn.io import checkpoint_config

    cfg = checkpoint_config(read_checkpoint(ckpt_path, "series"))
    return tuple(cfg.layer_n_heads or [cfg.n_heads] * cfg.n_layers)


def run_series(own: dict[str, str], overrides: list[str]) -> str:
    """``series=``: the same analysis of each checkpoint, oldest step first, into one ``out``: one
    ``head_metrics.csv`` and one ``head_roles_history.csv`` with the training steps as their steps, and
    the role timeline drawn from them."""
    from mhaexp.cli import import_model
    from mhaexp.cli.series import FIELD, resolve_series

    out = Path(own.get("out") or "analysis-series")
    check_output_dir(out, "out")
    items = resolve_series(own["series"], out, import_model.run)
    shapes = [heads_per_layer(item.ckpt) for item in items]
    for item, shape in zip(items, shapes, strict=True):  # checked before anything is written
        if shape != shapes[0]:
            why = f"has heads per layer {list(shape)}, step {items[0].step}'s checkpoint {list(shapes[0])}"
            raise ConfigError(FIELD, str(item.ckpt), why + "; a timeline compares the same heads")
    lines = []
    for k, item in enumerate(items):
        done = analyse(item.ckpt, own, overrides, out, item.step, fresh=k == 0, pictures=k == len(items) - 1)
        roles = next(line for line in done if line.startswith("heads per role: "))
        lines.append(f"step {item.step} ({item.how}): {item.ckpt}: {roles[len('heads per role: ') :]}")
    steps = ", ".join(str(i.step) for i in items)
    return "\n".join(
        [
            *lines,
            f"analysed {len(items)} checkpoints at steps {steps} into {out}",
            f"head metrics: {out / HEAD_METRICS_FILE}",
            f"role timeline: {out / 'role_timeline.png'}",
            f"page: {out / 'index.html'}",
        ]
    )


def analyse(
    ckpt_path: Path,
    own: dict[str, str],
    overrides: list[str],
    out: Path,
    step: int | None,
    *,
    fresh: bool,
    pictures: bool,
) -> list[str]:
    """One checkpoint's analysis into ``out`` at ``step`` (None: its recorded global_step); ``fresh``
    starts the appended tables anew, ``pictures`` draws the figures. The lines to print."""
    from mhaexp.analysis.callback import run_analysis
    from mhaexp.analysis.collect import collect_patterns, objective_for, probe_from_datamodule
    from mhaexp.analysis.config import AnalysisConfig
    from mhaexp.analysis.export import all_role_counts
    from mhaexp.analysis.head_view import FILE_NAME as HEAD_VIEW
    from mhaexp.analysis.head_view import head_view_for
    from mhaexp.analysis.treebank_scores import (
        format_relation_table,
        probe_with_treebank,
        relation_table,
        write_relation_table,
    )
    from mhaexp.checkpoint import read_checkpoint
    from mhaexp.config import build, instantiate_plain
    from mhaexp.data.tokenizers import unknown_words
    from mhaexp.nn.io import data_vocab_bounds, saved_tokenizer
    from mhaexp.training.module import load_module

    module = load_module(ckpt_path, "ckpt")
    ckpt = read_checkpoint(ckpt_path, "ckpt")
    step = int(ckpt.get("global_step", 0)) if step is None else step
    bounds = data_vocab_bounds(ckpt)
    beside = saved_tokenizer(ckpt, ckpt_path)  # mhaexp-import saved the model's tokenizer there
    del ckpt
    cfg = compose({**own, "ckpt": str(ckpt_path)}, overrides, beside)
    acfg = build(AnalysisConfig, cfg.analysis, "analysis", complete=True)
    datamodule = instantiate_plain(cfg.data)  # builds the tokenizer, generates nothing
    _check_vocabulary(datamodule, bounds, cfg.data.kind)
    tokenizer = datamodule.tokenizer
    treebank = None
    fewer = ""
    if own.get("conllu"):
        probe, treebank = conllu_probe(own["conllu"], module, tokenizer, int(cfg.data.batch_size), acfg)
        source = f"conllu={own['conllu']}"
    else:
        if datamodule.seq_len > module.model.cfg.max_seq_len:
            raise ConfigError(
                "data.seq_len", datamodule.seq_len, f"must be <= the model's max_seq_len={module.model.cfg.max_seq_len}"
            )
        datamodule.prepare_data()
        probe = probe_from_datamodule(datamodule, acfg.probe_sequences, objective_for(module))
        if probe.n_sequences < acfg.probe_sequences:
            fewer = f" (all the probe set holds; probe_sequences={acfg.probe_sequences})"
        max_tokens, batch_size = module.model.cfg.max_seq_len, int(cfg.data.batch_size)
        limit = acfg.treebank_max_sentences
        probe, treebank = probe_with_treebank(probe, acfg, tokenizer, max_tokens, batch_size, limit)
        source = f"data={cfg.data.kind}" + (f" + treebank={acfg.treebank}" if treebank is not None else "")
    notes: list[str] = []
    if own.get("text") is not None:
        text_batch = encode_text(own["text"], tokenizer, module.model.cfg.max_seq_len)
        unknown = unknown_words(own["text"], tokenizer)
        if unknown:  # the head view then shows <unk> where the user typed a word
            notes.append(
                f"note: text: {len(unknown)} of {len(own['text'].split())} words are not in the tokenizer's "
                f"vocabulary and were read as {tokenizer.id_to_token(tokenizer.unk_id)}: {', '.join(unknown)}"
            )
    out.mkdir(parents=True, exist_ok=True)
    for name in (HEAD_METRICS_FILE, HEAD_ROLES_HISTORY_FILE):  # appended to by run_analysis: start fresh
        if fresh:
            (out / name).unlink(missing_ok=True)
    _, roles, rows, images = run_analysis(module.model, probe, acfg, out, step, expensive=True, pictures=pictures)
    if own.get("text") is not None:
        patterns = [p[0].cpu() for p in collect_patterns(module.model, text_batch)]
        tokens = [tokenizer.id_to_token(int(i)) for i in text_batch["input_ids"][0]]
        title = f"head view, step {step}: {own['text']}"
        head_view_for(module.model, patterns, tokens, roles, out / HEAD_VIEW, title)
    table: list[str] = []
    if treebank is not None:
        relations = relation_table(module.model, probe, acfg)
        write_relation_table(out / TREEBANK_RELATIONS_FILE, relations)
        table = [
            f"treebank: {treebank.report(module.model.cfg.max_seq_len)}",
            *format_relation_table(relations),
            f"per-relation table: {out / TREEBANK_RELATIONS_FILE}",
        ]
    counts = {k: v for k, v in all_role_counts(roles).items() if v}
    n_pictures = sum(Path(p).suffix == ".png" for p in images.values())
    return [
        f"analysed {ckpt_path} (step {step}) on {source}: {probe.n_sequences} probe sequences{fewer}",
        *notes,
        *table,
        "heads per role: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"wrote {len(rows)} metric values, head roles and {n_pictures} pictures to {out}",
        f"report: {out / ANALYSIS_REPORT_FILE}",
        f"head view: {out / HEAD_VIEW}" + (" (text=)" if own.get("text") is not None else " (probe sequence 0)"),
        f"page: {out / 'index.html'}",
    ]


def main(argv: list[str] | None = None) -> None:
    key_value_main(PROG, __doc__, run, argv)


if __name__ == "__main__":
    main()
