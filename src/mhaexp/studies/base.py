"""What a study is: a name, a title, how it runs, and how it reads its verdicts back from its runs."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

from mhaexp.errors import ConfigError
from mhaexp.studies.report import verdict_document, write_report
from mhaexp.studies.runner import Budget, StudyContext, prepare_out, recorded_budget, write_budget
from mhaexp.studies.verdict import Claim


class Study(ABC):
    """Subclasses set ``name``, ``title``, ``default_steps`` and ``minutes`` (on 2 CPU cores, default budget)."""

    name: str
    title: str
    default_steps: int
    minutes: float
    default_seeds: int = 2  # seeds without --seeds
    summary: str  # one line for the table of studies
    # The paper measured a pretrained model: ``--model <source>`` imports one and runs the measurement
    # claims on it (run_model / model_verdicts) instead of training.
    takes_model: bool = False

    @abstractmethod
    def run(self, ctx: StudyContext) -> None:
        """Train and measure: every number the verdicts need ends up in a file under ``ctx.out``."""

    @abstractmethod
    def verdicts(self, ctx: StudyContext) -> list[Claim]:
        """The claims, computed from the files ``run`` wrote (and nothing else)."""

    def run_model(self, ctx: StudyContext, ckpt: Path) -> None:
        """``--model``: measure the imported checkpoint ``ckpt``; every number ends up under ``ctx.out``."""
        raise NotImplementedError

    def model_verdicts(self, ctx: StudyContext) -> list[Claim]:
        """``--model``: the measurement claims, computed from the files ``run_model`` wrote."""
        raise NotImplementedError

    def check_model(self, budget: Budget) -> None:
        """ConfigError when ``--model`` is given to a study whose paper trained its own models."""
        if budget.model is not None and not self.takes_model:
            from mhaexp.studies import model_studies

            takes = ", ".join(model_studies())
            valid = f"only with a study of a pretrained model ({takes}); {self.name} trains its own"
            raise ConfigError("--model", budget.model, valid)

    def _runs_budget(self, out: Path, asked: Budget) -> Budget:
        """The runs' budget; ConfigError if ``--steps`` or ``--seeds`` ask for another one."""
        runs = recorded_budget(out, asked.n_jobs)
        for name, had, want in (
            ("steps", runs.n_steps(self.default_steps), asked.steps and asked.n_steps(self.default_steps)),
            ("seeds", len(runs.seed_list(self.default_seeds)), asked.seeds and len(asked.seed_list())),
        ):
            if want and want != had:
                raise ConfigError(f"--{name}", want, f"{had}, as the runs in {out} had (or leave it out)")
        return runs

    def preflight_overrides(self, budget: Budget) -> list[str]:
        """Overrides of the study's first stage, checked (with the user's) before anything runs."""
        return []

    def notes(self, ctx: StudyContext) -> list[str]:
        return []

    def execute(self, out: Path, budget: Budget, rerun: bool = True, echo=print) -> dict:
        """Run (unless ``rerun`` is false: verdicts from the runs already there) and write the report.

        Without ``rerun`` the verdicts take the budget the runs were trained with: they read it (a window's
        share of training, the seeds to compare), and the default would silently misplace a longer run's.
        """
        self.check_model(budget)
        if not rerun:
            budget = self._runs_budget(Path(out), budget)
        ctx = StudyContext(self.name, Path(out), budget, echo=echo)
        runtime = None
        if rerun:
            prepare_out(ctx.out)
            write_budget(ctx.out, budget, finished=False)
            start = time.perf_counter()
            if budget.model is not None:
                self.run_model(ctx, ctx.import_model())
            else:
                self.run(ctx)
            runtime = round(time.perf_counter() - start, 1)
            write_budget(ctx.out, budget, finished=True)
        claims = self.model_verdicts(ctx) if budget.model is not None else self.verdicts(ctx)
        doc = verdict_document(self.name, self.title, claims, budget, ctx.stage_seconds, runtime)
        write_report(ctx.out, doc, claims, self.notes(ctx))
        return doc
