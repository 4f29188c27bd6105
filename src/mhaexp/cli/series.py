"""The checkpoints of ``mhaexp-analyze series=``, each with the training step it is drawn at.

A series is either

* a comma-separated list of local items, each one of
  - a checkpoint file (ours: its recorded ``global_step``; one from ``mhaexp-import``: the step its
    ``revision=stepN`` gave it),
  - a run directory (every checkpoint in ``<run>/checkpoints/``, one per step; a run keeps its newest
    step's checkpoint, so copies of earlier ones kept there, under any name, join the series),
  - a ``save_pretrained`` directory, imported with ``mhaexp-import`` into ``<out>/checkpoints/step<N>.ckpt``; its
    step is the ``global_step`` HF's Trainer records in ``trainer_state.json``, else the number its
    name ends in (``step1000``, ``checkpoint-1000``); or
* ``<hub name>@<rev>,<rev>,...`` (e.g. ``EleutherAI/pythia-70m@step1000,step2000``): each revision
  imported from the hub (needs the network, or the HF cache); the step is the revision's number.

A checkpoint whose step cannot be known (an import without a ``stepN`` revision, a directory with no
recorded step and no number in its name, a recorded step its name contradicts) is refused, as are two
checkpoints at one step: the timeline's columns would be guesses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mhaexp.errors import ConfigError
from mhaexp.rundir import CHECKPOINT_DIR

FIELD = "series"
# A save_pretrained directory's name that carries its step: Pythia's branches, HF Trainer's checkpoints.
STEP_NAME = re.compile(r"(?:^|[-_])(?:step|checkpoint-)(\d+)$")
LAST_CHECKPOINT = re.compile(r"^last(-v\d+)?\.ckpt$")  # Lightning's save_last copies (-v1 after a resume)
TRAINER_STATE = "trainer_state.json"  # where HF's Trainer records the global_step of a saved checkpoint


@dataclass(frozen=True)
class SeriesItem:
    ckpt: Path
    step: int
    how: str  # where the step came from, printed beside it
    source: str | None = None  # to import into ckpt first (a save_pretrained directory or a hub name)
    revision: str | None = None

    def origin(self) -> str:
        """What the user named: the checkpoint file, or the source imported into it."""
        if self.source is None:
            return str(self.ckpt.resolve())
        return f"{self.source}@{self.revision}" if self.revision else str(Path(self.source).resolve())

    def fetch(self, importer: Callable[[list[str]], str]) -> None:
        if self.source is not None:
            importer(
                [f"source={self.source}", *([f"revision={self.revision}"] if self.revision else []), f"out={self.ckpt}"]
            )


def resolve_series(spec: str, out: Path, importer: Callable[[list[str]], str]) -> list[SeriesItem]:
    """The checkpoints ``spec`` names, by step; sources are imported with ``importer`` (mhaexp-import's run)."""
    words = [w.strip() for w in spec.split(",") if w.strip()]
    if not words:
        raise ConfigError(
            FIELD, spec, "give checkpoints, run or save_pretrained directories, or name@step1000,step2000"
        )
    if "@" in words[0]:
        items = _hub_revisions(words, out)
    else:
        items = [item for word in words for item in _local(word, out)]
    by_step: dict[int, SeriesItem] = {}
    for item in items:
        seen = by_step.get(item.step)
        if seen is not None and seen.origin() != item.origin():
            raise ConfigError(
                FIELD, spec, f"{seen.origin()} and {item.origin()} are both at step {item.step}; keep one"
            )
        by_step.setdefault(item.step, item)
    if len(by_step) < 2:
        raise ConfigError(FIELD, spec, "names one training step; a series needs checkpoints at two or more steps")
    ordered = [by_step[s] for s in sorted(by_step)]
    for item in ordered:  # imports only once every step is known: a refusal leaves nothing behind
        item.fetch(importer)
    return ordered


def _hub_revisions(words: list[str], out: Path) -> list[SeriesItem]:
    from mhaexp.cli.import_model import STEP_REVISION

    source, _, first = words[0].partition("@")
    revisions = [first, *words[1:]]
    if not source or any("@" in r for r in revisions[1:]):
        raise ConfigError(FIELD, ",".join(words), "one source with its revisions: name@step1000,step2000")
    for rev in revisions:  # all checked before anything is downloaded
        if not STEP_REVISION.match(rev):
            raise ConfigError(FIELD, f"{source}@{rev}", "a revision's training step is its name: step1000, step2000")
    return [
        SeriesItem(
            out / CHECKPOINT_DIR / f"{rev}.ckpt",
            int(STEP_REVISION.match(rev).group(1)),
            f"revision {rev}",
            source,
            rev,
        )
        for rev in revisions
    ]


def _local(word: str, out: Path) -> list[SeriesItem]:
    path = Path(word).expanduser()
    if path.is_file():
        return [checkpoint_item(path)]
    if (path / CHECKPOINT_DIR).is_dir():
        # last.ckpt repeats a step's checkpoint: read after the step files, it adds no step of its own.
        found = sorted(
            (path / CHECKPOINT_DIR).glob("*.ckpt"), key=lambda p: (bool(LAST_CHECKPOINT.match(p.name)), p.name)
        )
        if not found:
            raise ConfigError(FIELD, word, f"the run directory has no checkpoints in {CHECKPOINT_DIR}/")
        by_step: dict[int, SeriesItem] = {}
        for p in found:
            item = checkpoint_item(p)
            by_step.setdefault(item.step, item)
        return list(by_step.values())
    if (path / "config.json").is_file():
        step, how = directory_step(path)
        return [SeriesItem(out / CHECKPOINT_DIR / f"step{step}.ckpt", step, how, str(path))]
    raise ConfigError(FIELD, word, "not a checkpoint file, a run directory or a save_pretrained directory")


def checkpoint_item(path: Path) -> SeriesItem:
    """A checkpoint file with its step: ours recorded it; an import has one only from a ``stepN`` revision."""
    from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint

    ckpt = read_checkpoint(path, FIELD)
    imported = ckpt.get(CHECKPOINT_KEY, {}).get("imported")
    step = int(ckpt.get("global_step", 0))
    if imported is None:
        return SeriesItem(path, step, "global_step")
    from mhaexp.cli.import_model import STEP_REVISION

    rev = imported.get("revision") or ""
    if not STEP_REVISION.match(rev):
        where = f"{imported.get('source')}" + (f"@{rev}" if rev else "")
        raise ConfigError(
            FIELD,
            str(path),
            f"imported from {where}, which records no training step; import a stepN revision, or list the "
            "save_pretrained directory itself (its trainer_state.json or a name ending in stepN)",
        )
    return SeriesItem(path, step, f"revision {rev}")


def directory_step(path: Path) -> tuple[int, str]:
    """A save_pretrained directory's training step, and where it was read."""
    state = path / TRAINER_STATE
    recorded = None
    if state.is_file():
        try:
            recorded = int(json.loads(state.read_text())["global_step"])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(FIELD, str(state), f"has no integer global_step ({type(e).__name__})") from None
    named = STEP_NAME.search(path.name)
    if recorded is not None and named is not None and int(named.group(1)) != recorded:
        raise ConfigError(
            FIELD, str(path), f"its name says step {named.group(1)}, its {TRAINER_STATE} global_step {recorded}"
        )
    if recorded is not None:
        return recorded, f"{TRAINER_STATE} global_step"
    if named is not None:
        return int(named.group(1)), "directory name"
    raise ConfigError(
        FIELD,
        str(path),
        f"records no training step: give it a {TRAINER_STATE} with global_step, or a name ending in stepN",
    )
