"""Regenerate the W&B GraphQL responses of this folder from the fake sweep of ``tests/test_compare.py``.

    .venv/bin/python tests/data/wandb_api/synthesize.py

Run it only when that fake sweep changes: the test checks that W&B and run directories agree, so the
two must describe the same runs. The response shapes are those the W&B server returns to the queries
of ``wandb.apis.public`` (see README.md); the values are what ``mhaexp-train`` would have logged.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for test_compare

from test_compare import (  # noqa: E402
    LAYER_RUNS,
    PRUNED_JOB,
    RUNS,
    STEPS,
    SWEEP,
    FakeRun,
    job_config,
    kv_bytes,
    metrics_rows,
    params_attention,
    params_total,
    pruning_rows,
    role_counts,
    summary,
)

from mhaexp.nn.config import ModelConfig  # noqa: E402
from mhaexp.training.loggers import flat_config  # noqa: E402

ENTITY, PROJECT = "mhaexp-lab", "mhaexp"
T0 = 1735732800.0  # 2025-01-01T12:00:00Z
WANDB_META = {
    "cli_version": "0.19.8",
    "python_version": "3.11.9",
    "is_jupyter_run": False,
    "is_kaggle_kernel": False,
    "start_time": T0,
    "framework": "lightning",
    "t": {
        "1": [1, 5, 9, 41, 50, 53, 55, 103],
        "2": [1, 5, 9, 41, 50, 53, 55, 103],
        "3": [7, 13, 16, 23, 55],
        "4": "3.11.9",
        "5": "0.19.8",
        "8": [5],
        "12": "0.19.8",
        "13": "linux-x86_64",
    },
}


def fit_start(run: FakeRun) -> dict[str, Any]:
    """What RunRecord.on_fit_start logs as hyperparameters (config) and summary."""
    return {
        "params/total": params_total(run),
        "params/attention": params_attention(run),
        "kv_cache_bytes_per_token": kv_bytes(run),
        "n_heads_total": run.n_layers * run.n_heads,
    }


def wandb_config(run: FakeRun) -> dict[str, Any]:
    """The run's config as the server stores it: every key wrapped in {"desc", "value"}."""
    job = job_config(run)
    config = flat_config(job, ModelConfig(**job["model"]))
    config.update(fit_start(run))
    stored = {k: {"desc": None, "value": v} for k, v in config.items()}
    stored["_wandb"] = {"desc": None, "value": WANDB_META}
    return stored


def history(run: FakeRun) -> list[dict[str, Any]]:
    """History rows in log() order: Lightning's train/val rows and the analysis callback's role counts."""
    events = []
    for m in metrics_rows(run):
        row = {k: v for k, v in m.items() if k != "step"}
        kind = 0 if "train/loss" in row else 1
        events.append((m["step"], kind, {**row, "epoch": 0, "trainer/global_step": m["step"]}))
    if run.status == "ok":
        events += [(s, 2, {**role_counts(run, s), "trainer/global_step": s}) for s in STEPS]
    # After training, the pruning steps of one criterion, as mhaexp.pruning logs them.
    if run.job == PRUNED_JOB and run.group == SWEEP:
        for point in pruning_rows(run):
            if point["criterion"] == "importance":
                pruned = round(point["frac_pruned"] * run.n_layers * run.n_heads)
                metrics = {
                    "pruning/heads_pruned": float(pruned),
                    "pruning/heads_remaining": float(point["heads_remaining"]),
                    "pruning/fraction_pruned": point["frac_pruned"],
                    "pruning/val_loss": point["val_loss"],
                    "pruning/val_acc": point["val_acc"],
                }
                events.append((STEPS[-1], 3 + pruned, {**metrics, "trainer/global_step": STEPS[-1]}))
    rows = [row for *_, row in sorted(events, key=lambda e: e[:2])]
    for i, row in enumerate(rows):
        row.update(_step=i, _runtime=round(0.2 * i + 1.5, 3), _timestamp=round(T0 + 0.2 * i + 1.5, 3))
    return rows


def wandb_summary(run: FakeRun, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Last value of every logged key, plus what RunRecord puts in the summary directly."""
    last: dict[str, Any] = {}
    for row in rows:
        last.update(row)
    last.update(fit_start(run))
    if run.status == "ok":
        last.update({k: v for k, v in summary(run).items() if k != "global_step"})
    last["_wandb"] = {"runtime": int(last["_runtime"])}
    return last


def node(run: FakeRun, full: bool, rows: list[dict[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "projectId": "8410",
        "id": base64.b64encode(f"Run:v1:{run.wandb_id}:{PROJECT}:{ENTITY}".encode()).decode(),
        "tags": ["head_count_sweep"],
        "name": run.wandb_id,
        "displayName": run.name,
        "sweepName": None,
        "state": "finished" if run.status == "ok" else "failed",
        "group": run.group,
        "jobType": None,
        "commit": None,
        "readOnly": False,
        "createdAt": f"2025-01-01T12:0{run.job}:00",
        "heartbeatAt": f"2025-01-01T12:0{run.job}:45",
        "description": None,
        "notes": None,
        "historyLineCount": len(rows),
        "user": {"name": "Researcher", "username": "researcher"},
    }
    if full:
        keys = sorted({k for row in rows for k in row})
        fields.update(
            config=json.dumps(wandb_config(run)),
            summaryMetrics=json.dumps(wandb_summary(run, rows)),
            systemMetrics="{}",
            historyKeys={
                "lastStep": len(rows) - 1,
                "keys": {k: {"typeCounts": [{"type": "number", "count": sum(k in r for r in rows)}]} for k in keys},
            },
        )
    return fields


def write(name: str, payload: dict[str, Any]) -> None:
    (HERE / name).write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")


def main() -> None:
    write(
        "viewer.json",
        {
            "data": {
                "viewer": {
                    "id": "VXNlcjoxMjM0NQ==",
                    "entity": ENTITY,
                    "username": "researcher",
                    "email": "researcher@example.org",
                    "flags": "{}",
                    "teams": {"edges": [{"node": {"name": ENTITY}}]},
                }
            }
        },
    )
    for runs in (RUNS, LAYER_RUNS):
        edges = []
        for run in runs:
            rows = history(run)
            edges.append(
                {"node": node(run, False, rows), "cursor": base64.b64encode(f"cursor:{run.job}".encode()).decode()}
            )
            write(f"run_{run.wandb_id}.json", {"data": {"project": {"run": node(run, True, rows)}}})
            write(
                f"history_{run.wandb_id}.json",
                {"data": {"project": {"run": {"history": [json.dumps(r) for r in rows]}}}},
            )
        page = {"edges": edges, "pageInfo": {"endCursor": edges[-1]["cursor"], "hasNextPage": False}}
        write(
            f"runs_{runs[0].group}.json",
            {
                "data": {
                    "project": {
                        "internalId": base64.b64encode(f"Project:v1:{PROJECT}:{ENTITY}".encode()).decode(),
                        "runCount": len(runs),
                        "readOnly": False,
                        "runs": page,
                    }
                }
            },
        )


if __name__ == "__main__":
    main()
