"""``mhaexp-compare``: compare the runs of a sweep (or of a W&B group) in one table, plots and a report.

mhaexp-compare multirun/2025-01-01/12-00-00_ab12cd
mhaexp-compare runs/a runs/b --out cmp --format html --metric val/loss
mhaexp-compare --wandb my-team/mhaexp --group 12-00-00_ab12cd
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mhaexp.errors import ArgumentParser, ConfigError, fail
from mhaexp.net import unreachable, wandb_server
from mhaexp.rundir import check_output_dir

if TYPE_CHECKING:
    from mhaexp.compare.runs import RunSet

PROG = "mhaexp-compare"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG, description="Compare mhaexp runs: a table over seeds, plots and a Markdown/HTML report."
    )
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="sweep directories (searched recursively) or run directories",
    )
    p.add_argument(
        "--out", type=Path, help="report directory (default: <first PATH>/compare; with --wandb: ./compare/<group>)"
    )
    p.add_argument("--format", choices=("md", "html"), default="md", help="report format (default: md)")
    p.add_argument(
        "--metric",
        default="best_val_loss",
        help="summary key to aggregate over seeds and plot against n_heads (default: best_val_loss)",
    )
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from the W&B API instead of directories")
    p.add_argument("--group", help="with --wandb: only runs of this W&B group (a sweep's directory name)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.wandb and args.paths:
        fail(PROG, "give run directories or --wandb ENTITY/PROJECT, not both")
    if args.group and not args.wandb:
        fail(PROG, "--group needs --wandb ENTITY/PROJECT")
    if not args.wandb and not args.paths:
        fail(PROG, "no runs given: pass a sweep directory or run directories, or --wandb ENTITY/PROJECT --group G")
    if args.wandb and (args.wandb.count("/") != 1 or not all(args.wandb.split("/"))):
        fail(PROG, f"--wandb wants ENTITY/PROJECT, got {args.wandb!r}")
    for path in args.paths:
        if not path.exists():
            fail(PROG, f"no such file or directory: {path}")
        if not path.is_dir():
            fail(PROG, f"not a directory: {path}")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def out_dir(args: argparse.Namespace) -> Path:
    """The report directory, checked before anything is read or printed: a refused command prints only its error."""
    if args.out is not None:
        out = args.out
    elif args.wandb:
        out = Path("compare") / (args.group or args.wandb.replace("/", "_"))
    else:
        out = args.paths[0] / "compare"
    try:
        check_output_dir(out, "--out")
    except ConfigError as e:
        fail(PROG, e)
    return out


def load(args: argparse.Namespace) -> RunSet:
    # Imports deferred: an argument error should not wait for pandas, matplotlib or wandb.
    if args.wandb:
        import wandb

        from mhaexp.compare.wandb_source import load_wandb_runs

        os.environ.setdefault("WANDB_SILENT", "true")
        server = wandb_server()
        # Asked first: W&B reports a server it cannot reach as "Failed to verify credentials".
        why = unreachable(server)
        if why is not None:
            fail(
                PROG,
                f"--wandb {args.wandb}: the W&B server {server} cannot be reached ({why}); check the network "
                "or WANDB_BASE_URL",
            )
        try:
            return load_wandb_runs(wandb.Api(timeout=30), args.wandb, args.group)
        except wandb.errors.UsageError as e:  # no key at all: nothing was sent
            fail(PROG, f"--wandb {args.wandb}: {first_line(e)} (or set WANDB_API_KEY)")
        except wandb.errors.AuthenticationError as e:  # the server answers (asked above): it refused the key
            fail(
                PROG,
                f"--wandb {args.wandb}: the W&B server {server} did not accept the API key ({first_line(e)}); "
                "run `wandb login` or set WANDB_API_KEY",
            )
        except Exception as e:  # an unknown project, a server error: the command ends the same way
            fail(PROG, f"W&B: {type(e).__name__}: {e}", code=1)
    from mhaexp.compare.runs import load_runs

    try:
        return load_runs(args.paths)
    except OSError as e:
        fail(PROG, str(e))


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    out = out_dir(args)
    runset = load(args)
    for warning in runset.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    where = (
        f"W&B {args.wandb}" + (f" group {args.group}" if args.group else "")
        if args.wandb
        else ", ".join(map(str, args.paths))
    )
    if runset.runs.empty:
        if runset.warnings:
            fail(PROG, f"none of the {len(runset.warnings)} runs in {where} could be read", code=1)
        fail(PROG, f"no runs found in {where}")
    if args.metric not in runset.runs.columns:
        known = [c for c in ("best_val_loss", "val/loss", "val/acc", "train/loss") if c in runset.runs.columns]
        fail(PROG, f"--metric {args.metric!r} is not a summary key of these runs (e.g. {', '.join(known) or 'none'})")

    from mhaexp.compare.report import terminal_summary, write_report

    print(terminal_summary(runset, args.metric))
    report = write_report(runset, out, metric=args.metric, fmt=args.format, source=where)
    print(f"\nreport: {report.path}")
    for plot in report.plots:
        print(f"  plot: {plot}")


if __name__ == "__main__":
    main()
