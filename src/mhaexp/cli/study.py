"""``mhaexp-study``: run one published study at small scale and write its verdicts.

mhaexp-study list
mhaexp-study wu2024                         # default budget, studies/wu2024/{verdict.json,report.md}
mhaexp-study wu2024 --steps 4000 --seeds 3 trainer=gpu
STUDY_SMOKE=1 mhaexp-study wu2024           # a few dozen steps: proves it runs, says nothing
mhaexp-study wu2024 --verdict-only          # recompute the verdicts from the runs already there
mhaexp-study clark2019 --model bert-base-uncased   # the measurement claims on a pretrained model (network)
mhaexp-study clark2019 --model path/to/bert conllu=my_treebank.conllu   # on your own treebank (offline)
mhaexp-study gu2024 --model path/to/save_pretrained_dir --out studies/gu2024-gpt2   # offline
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from mhaexp.cli.preflight import check_jobs
from mhaexp.errors import ArgumentParser, ConfigError, fail
from mhaexp.rundir import check_output_dir
from mhaexp.studies import STUDIES, get_study
from mhaexp.studies.runner import Budget, StudyError
from mhaexp.studies.verdict import verdict_word

PROG = "mhaexp-study"


def parse(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description="Reproduce a head-specialization study; write its verdicts.")
    p.add_argument("study", help=f"list, or one of: {', '.join(STUDIES)}")
    p.add_argument("overrides", nargs="*", help="mhaexp-train overrides for every job, e.g. trainer=gpu")
    p.add_argument("--out", type=Path, default=None, help="study directory (default: studies/<study>)")
    p.add_argument("--steps", type=int, default=None, help="training steps of the main runs (default: the study's)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per compared setting (default: the study's)")
    p.add_argument("--jobs", type=int, default=2, help="sweep jobs run at once (default 2; 1 = one after another)")
    p.add_argument("--verdict-only", action="store_true", help="no training: verdicts from the runs in --out")
    p.add_argument(
        "--model",
        default=None,
        help="measure a pretrained model instead of training (hub name or save_pretrained directory; "
        "studies whose paper measured one)",
    )
    return p.parse_intermixed_args(argv)  # options and key=value overrides in any order


def preflight(overrides: list[str]) -> None:
    """The study's first jobs, with the user's overrides, checked before anything is written."""
    _, invalid = check_jobs(overrides)
    if invalid:
        raise invalid[0].error


def check_source(source: str) -> None:
    """``--model``: a directory or hub name mhaexp-import can read, of a family it converts (before anything
    is written; a hub name is downloaded into the HF cache here, and the import reads it from there)."""
    from mhaexp.cli.import_model import local_directory
    from mhaexp.nn.hf_import import hf_model_config, read_hf_config

    hf_model_config(read_hf_config(local_directory(source, None), source), source)


def _stop(signum: int, _frame: object) -> None:
    # SIGTERM (kill, scancel) as an exception: the running sweep's process group is killed on the way out
    # (mhaexp.studies.runner.run_group), where the default action would leave it training.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _stop)
    # A study started in the background of a script inherits SIGINT ignored (POSIX shells do that without job
    # control); Ctrl-C or kill -INT must still stop it and its sweep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.study == "list":
        for name in STUDIES:
            s = get_study(name)
            print(f"{name:<14} ~{s.minutes:g} min on 2 cores  {s.summary}")
        return
    if args.study not in STUDIES:
        fail(PROG, ConfigError("study", args.study, f"one of {', '.join(STUDIES)} (or list)"))
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        fail(PROG, ConfigError("override", bad[0], "key=value, e.g. trainer=gpu"))
    smoke = os.environ.get("STUDY_SMOKE", "") not in ("", "0")
    out = args.out or Path("studies") / args.study
    try:
        check_output_dir(out, "--out")
        budget = Budget(
            steps=args.steps,
            seeds=args.seeds,
            smoke=smoke,
            n_jobs=args.jobs,
            extra=tuple(args.overrides),
            model=args.model,
        )
        study = get_study(args.study)
        study.check_model(budget)
        if args.verdict_only:
            pass
        elif args.model is not None:
            check_source(args.model)
        else:
            preflight(study.preflight_overrides(budget) + list(budget.extra))
        doc = study.execute(out, budget, rerun=not args.verdict_only)
    except (ConfigError, StudyError) as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        # Ctrl-C: the running sweep is already killed (runner.run_group); a traceback would say nothing more.
        fail(PROG, f"interrupted; {out} holds part of the study (a rerun starts it again)", code=128 + signal.SIGINT)
    print(f"\n{doc['title']}")
    for c in doc["claims"]:
        print(f"  [{verdict_word(c['holds']):>13}] {c['claim']}")
    print(f"report  : {out / 'report.md'}\nverdicts: {out / 'verdict.json'}")


if __name__ == "__main__":
    main()
