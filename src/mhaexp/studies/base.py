"""What a study is: a name, a title, how it runs, and how it reads its verdicts back from its runs."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

from mhaexp.studies.report import verdict_document, write_report
from mhaexp.studies.runner import Budget, StudyContext, prepare_out
from mhaexp.studies.verdict import Claim


class Study(ABC):
    """Subclasses set ``name``, ``title``, ``default_steps`` and ``minutes`` (on 2 CPU cores, default budget)."""

    name: str
    title: str
    default_steps: int
    minutes: float
    summary: str  # one line for the table of studies

    @abstractmethod
    def run(self, ctx: StudyContext) -> None:
        """Train and measure: every number the verdicts need ends up in a file under ``ctx.out``."""

    @abstractmethod
    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        """The claims, computed from the files ``run`` wrote (and nothing else)."""

    def preflight_overrides(self, budget: Budget) -> list[str]:
        """Overrides of the study's first stage, checked (with the user's) before anything runs."""
        return []

    def notes(self, ctx: StudyContext) -> list[str]:
        return []

    def execute(self, out: Path, budget: Budget, rerun: bool = True, echo=print) -> dict:
        """Run (unless ``rerun`` is false: verdicts from the runs already there) and write the report."""
        ctx = StudyContext(self.name, Path(out), budget, echo=echo)
        runtime = None
        if rerun:
            prepare_out(ctx.out)
            start = time.perf_counter()
            self.run(ctx)
            runtime = round(time.perf_counter() - start, 1)
        claims = self.verdicts(ctx)
        doc = verdict_document(self.name, self.title, claims, budget, ctx.stage_seconds, runtime)
        write_report(ctx.out, doc, claims, self.notes(ctx))
        return doc
