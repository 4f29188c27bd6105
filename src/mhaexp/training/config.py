"""The trainer, optimizer and logger configs, and the one ``RunConfig`` a job is built from.

:func:`build_run` is the single builder: ``mhaexp-train``'s preflight calls it on every job of a sweep
before any starts, and the job (Hydra's task function, possibly in another process) receives its
result or, in another process, calls it once. Training code takes the RunConfig and checks nothing
again. No torch or Lightning import here (the preflight must stay fast); only ``trainer.accelerator=gpu``
asks torch whether CUDA is there, and ``init_from`` reads its checkpoint.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mhaexp.analysis.config import AnalysisConfig
from mhaexp.config import (
    DERIVED,
    Check,
    boolean,
    build,
    check_fields,
    check_mapping,
    choice,
    either,
    existing_file,
    int_at_least,
    integer,
    list_of,
    literal,
    nested,
    non_negative_int,
    number,
    optional,
    positive_int,
    positive_number,
    probability,
    register_defaults,
    setting,
    string,
)
from mhaexp.data.spec import DataConfig
from mhaexp.errors import ConfigError, unknown_key_hint
from mhaexp.nn.config import ModelConfig
from mhaexp.pruning.config import GQA_INITS, PruningConfig, validate_pruning

TRAINER_TARGET = "pytorch_lightning.Trainer"
# TrainerConfig fields that are ours, not Lightning Trainer keyword arguments.
NOT_TRAINER_ARGS = ("_target_", "compile")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_notebook", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", 16, 32, 64)
DEVICES = Check(
    lambda v: (
        (isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1))
        or v == "auto"
        or (isinstance(v, list) and len(v) > 0 and all(non_negative_int().test(x) for x in v))
    ),
    "must be a positive count, -1 (all), 'auto' or a non-empty list of device ids",
    0,
)
# fp16 autocast has no CPU kernels: Lightning then trains bf16-mixed instead, under the name the config gives.
CPU_UNSUPPORTED_PRECISIONS = ("16-mixed", "16", 16)
# Bytes a parameter holds while it trains in fp32 with AdamW: the weight, its gradient and two moments.
TRAIN_BYTES_PER_PARAM = 4 + 4 + 2 * 4
LOGGER_KINDS = ("wandb", "csv", "none")
WANDB_MODES = ("offline", "online", "disabled")


def cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor's CPU code generation would call (``CXX``, else g++ or clang++)."""
    return next((c for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c and shutil.which(c)), None)


def cuda_available() -> bool:
    import torch  # only here: most checks should not pay for importing torch

    return torch.cuda.is_available()


def cuda_built() -> bool:
    import torch

    return torch.version.cuda is not None


def available_memory(accelerator: str) -> tuple[int, str] | None:
    """(bytes a training run can take, where that figure comes from): the GPU's memory for a GPU
    accelerator, else the host's MemAvailable (/proc/meminfo; os.sysconf elsewhere). None when unknown."""
    if accelerator in ("gpu", "cuda"):
        import torch  # already loaded: the accelerator check asked for CUDA

        return torch.cuda.get_device_properties(0).total_memory, "on the GPU"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available (MemAvailable)"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available"
    except (ValueError, OSError):
        return None


def gigabytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


@dataclass
class TrainerConfig:
    """``conf/trainer/*.yaml``: the keyword arguments of Lightning's Trainer that our YAML sets.

    These defaults are the table (``trainer=cpu`` states nothing; other options state what they change).
    """

    _target_: str = setting(literal(TRAINER_TARGET), TRAINER_TARGET)
    accelerator: str = setting(choice(*ACCELERATORS), "cpu")
    devices: Any = setting(DEVICES, 1)
    num_nodes: int = setting(positive_int(), 1)  # multi-node also needs hydra.launcher.nodes to match (SLURM)
    strategy: str = setting(choice(*STRATEGIES), "auto")
    precision: Any = setting(choice(*PRECISIONS), "32-true")
    max_steps: int = setting(positive_int(), 1500)
    max_epochs: int | None = setting(optional(int_at_least(-1)), -1)
    val_check_interval: int = setting(positive_int(), 250)  # steps: also the checkpoint period
    check_val_every_n_epoch: int | None = setting(optional(positive_int()), None)
    limit_val_batches: Any = setting(
        either(non_negative_int(), probability(), valid="must be a batch count >= 0 or a fraction in [0, 1]"), 8
    )
    log_every_n_steps: int = setting(positive_int(), 10)
    gradient_clip_val: float | None = setting(optional(number(0.0)), 1.0)
    num_sanity_val_steps: int = setting(int_at_least(-1), 0)
    enable_progress_bar: bool = setting(boolean(), True)
    enable_model_summary: bool = setting(boolean(), False)
    deterministic: Any = setting(either(boolean(), choice("warn"), valid="must be true, false or 'warn'"), False)
    # Our sampler shards each global batch over the ranks itself (mhaexp.data.sampler), so
    # 1 and N processes see the same batches and resumed runs continue mid-epoch exactly.
    use_distributed_sampler: bool = setting(boolean(), False)
    # Ours, not a Trainer argument: torch.compile of the Transformer, in place (see mhaexp.training.run);
    # analysis, gates and pruning keep working. Off by default: on a small CPU run the compile time costs
    # more than it saves (README, "Speed"); on a GPU it pays.
    compile: bool = setting(boolean(), False)

    def __post_init__(self) -> None:
        check_fields(self, "trainer")
        if self.compile and self.accelerator in ("cpu", "auto") and not cpp_compiler():
            raise ConfigError(
                "trainer.compile",
                True,
                "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; install one or set "
                "trainer.compile=false",
            )
        if self.precision in CPU_UNSUPPORTED_PRECISIONS and (
            self.accelerator == "cpu" or (self.accelerator == "auto" and not cuda_available())
        ):
            raise ConfigError(
                "trainer.precision",
                self.precision,
                "fp16 mixed precision needs a GPU; on the CPU Lightning would train bf16-mixed instead. "
                "Use trainer.precision=bf16-mixed or 32-true",
            )
        if self.accelerator in ("gpu", "cuda") and not cuda_available():
            raise ConfigError(
                "trainer.accelerator",
                self.accelerator,
                "no CUDA GPU is visible on this machine (and torch was built "
                f"{'with' if cuda_built() else 'without'} CUDA); use trainer=cpu, or install CUDA torch "
                "with `make install TORCH=torch`",
            )

    def processes(self) -> int | None:
        """Training processes Lightning starts (one per device, on every node); None when the machine decides
        (``devices: -1`` or ``auto``)."""
        if isinstance(self.devices, list):
            return len(self.devices) * self.num_nodes
        if isinstance(self.devices, int) and self.devices >= 1:
            return self.devices * self.num_nodes
        return None

    def kwargs(self) -> dict[str, Any]:
        """The Trainer's keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_TRAINER_ARGS}


@dataclass
class OptimConfig:
    """``conf/optim/adamw.yaml``: AdamW with linear warmup and cosine decay (see LMModule)."""

    lr: float = setting(positive_number(), 3e-3)
    weight_decay: float = setting(number(0.0), 0.1)
    betas: tuple[float, float] = setting(
        list_of(number(0.0, 1.0, high_open=True), length=2), factory=lambda: (0.9, 0.95)
    )
    warmup_steps: int = setting(non_negative_int(), 100)
    min_lr_ratio: float = setting(probability(), 0.1)  # cosine decays to lr * min_lr_ratio at trainer.max_steps

    def __post_init__(self) -> None:
        check_fields(self, "optim")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoggerConfig:
    """``conf/logger/*.yaml``: a CSV log always (unless none), plus W&B for ``kind: wandb``."""

    # W&B: offline writes the run under the run directory (`wandb sync` uploads it later); online needs
    # `wandb login`.

    kind: str = setting(choice(*LOGGER_KINDS), "wandb")
    mode: str = setting(choice(*WANDB_MODES), "offline", only=["wandb"])
    project: str = setting(string(), "mhaexp", only=["wandb"])
    entity: str | None = setting(optional(string()), None, only=["wandb"])
    group: str | None = setting(optional(string()), None, only=["wandb"])  # null: the sweep directory in multirun
    # Every kind takes tags, so a preset that tags its runs (experiment=induction) combines with any logger.
    tags: list[str] = setting(list_of(string()), factory=list)
    name: str | None = setting(optional(string()), None, only=["wandb"])  # ${name} in the YAML
    # seconds to wait for the server when online; then the run goes on offline
    init_timeout: float = setting(positive_number(), 30, only=["wandb"])

    def __post_init__(self) -> None:
        check_fields(self, "logger")


@dataclass
class SweepConfig:
    """How a ``-m`` sweep treats its jobs (mhaexp.cli.train, mhaexp.training.sweep)."""

    # No dataclass defaults: conf/train.yaml's sweep node is the table (like the top-level keys').
    skip_invalid: bool = setting(boolean())
    objective: str | None = setting(optional(string()))  # a summary.json key for a model-based sweeper

    def __post_init__(self) -> None:
        check_fields(self, "sweep")


RUN_NAME = Check(lambda v: isinstance(v, str) and v != "" and "/" not in v, "must be a non-empty name without '/'", "")
RESUME = Check(
    lambda v: v is None or v == "auto" or (isinstance(v, str) and Path(v).expanduser().is_file()),
    "must be null, 'auto' or the path of an existing checkpoint",
    "/no/such.ckpt",
)
GROUPS = ("model", "data", "trainer", "optim", "analysis", "pruning", "logger")


@dataclass
class RunConfig:
    """One job, checked as a whole: each group's config plus the top-level keys of conf/train.yaml."""

    model: ModelConfig = setting(nested(ModelConfig))
    data: DataConfig = setting(nested(DataConfig))
    trainer: TrainerConfig = setting(nested(TrainerConfig))
    optim: OptimConfig = setting(nested(OptimConfig))
    analysis: AnalysisConfig = setting(nested(AnalysisConfig))
    pruning: PruningConfig = setting(nested(PruningConfig))
    logger: LoggerConfig = setting(nested(LoggerConfig))
    name: str = setting(RUN_NAME)
    seed: int = setting(integer())
    init_from: str | None = setting(optional(existing_file("mhaexp checkpoint (.ckpt)")))
    gqa_init: str = setting(choice(*GQA_INITS))
    resume: str | None = setting(RESUME)
    sweep: SweepConfig = setting(nested(SweepConfig))
    # The composed config, resolved, as plain data: what the loggers record (not read for settings).
    resolved: dict[str, Any] = setting(DERIVED, factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if self.model.max_seq_len < self.data.seq_len:
            raise ConfigError(
                "model.max_seq_len", self.model.max_seq_len, f"must be >= data.seq_len={self.data.seq_len}"
            )
        self.data.source.check_model(self.model.causal)
        self.data.check_trainable()
        processes = self.trainer.processes()
        if processes is not None and self.data.batch_size % processes:
            raise ConfigError(
                "data.batch_size",
                self.data.batch_size,
                f"must be divisible by the {processes} training processes (trainer.devices={self.trainer.devices} "
                f"x trainer.num_nodes={self.trainer.num_nodes}): the global batch is split evenly over them",
            )
        self.check_memory()
        validate_pruning(self.pruning, self.model, self.trainer.max_steps)
        if self.pruning.criterion == "role" and self.pruning.kind != "none" and not self.analysis.enabled:
            raise ConfigError(
                "pruning.criterion", "role", "needs the analysis (roles come from it); set analysis=default"
            )
        if self.analysis.enabled and self.data.n_probe < self.analysis.probe_sequences:
            raise ConfigError(
                "data.n_probe",
                self.data.n_probe,
                f"must be >= analysis.probe_sequences={self.analysis.probe_sequences}, the probe sequences the "
                "analysis reads; leave data.n_probe out (it follows analysis.probe_sequences) or lower that",
            )
        if self.analysis.enabled and self.analysis.treebank is not None:
            from mhaexp.data.treebank import check_treebank

            # Parsed now, so a bad file fails before training starts; its sentences are tokenized at the
            # first analysis (a BPE tokenizer is trained when the data is prepared, not by a config check).
            check_treebank(self.analysis.treebank, "analysis.treebank")
        if self.resume not in (None, "auto"):
            check_resume_model(self.resume, self.model)
        if self.init_from is not None:
            from mhaexp.training.init_from import validate_init  # reads the checkpoint, so it needs torch

            validate_init(self.init_from, self.model, self.gqa_init)

    def check_memory(self) -> None:
        """Refuse a model whose training state alone (:data:`TRAIN_BYTES_PER_PARAM` per parameter, per process
        on a CPU) exceeds the memory there is: it would end in the allocator or the OOM killer minutes in."""
        params = self.model.approx_params()
        copies = (self.trainer.processes() or 1) // self.trainer.num_nodes if self.trainer.accelerator == "cpu" else 1
        need = params * TRAIN_BYTES_PER_PARAM * copies
        have = available_memory(self.trainer.accelerator)
        if have is None or need <= have[0]:
            return
        embedding = self.model.vocab_size * self.model.d_model * (1 if self.model.tie_embeddings else 2)
        vocab = self.data.source.vocab_key() if embedding * 2 > params else None
        field, value = vocab if vocab is not None else ("model", f"{params:,} parameters")
        per = f" x {copies} processes" if copies > 1 else ""
        raise ConfigError(
            field,
            value,
            f"training needs at least {gigabytes(need)} ({params:,} parameters x {TRAIN_BYTES_PER_PARAM} bytes for "
            f"weights, gradients and AdamW state{per}), the machine has {gigabytes(have[0])} {have[1]}; use a "
            "smaller model or vocabulary",
        )


def check_resume_model(path: str, model: ModelConfig, ckpt: dict[str, Any] | None = None) -> None:
    """``resume=`` continues the same model: refuse a checkpoint of another shape (``ckpt``: the file, already
    read), naming every field that differs; Lightning would fail in ``load_state_dict`` with a page of size
    mismatches."""
    from mhaexp.checkpoint import CHECKPOINT_KEY, read_checkpoint  # torch.load: only with resume=<path>

    ckpt = read_checkpoint(path, "resume") if ckpt is None else ckpt
    saved = ModelConfig(**ckpt[CHECKPOINT_KEY]["model"]).to_dict()
    ours = model.to_dict()
    differ = [f"model.{k} {ours[k]} vs {saved[k]}" for k in ours if k != "extra" and ours[k] != saved.get(k)]
    if differ:
        raise ConfigError(
            "resume",
            path,
            f"the checkpoint holds another model ({', '.join(differ)}: this config vs the checkpoint); resume "
            "with the config it was trained with, or start a new run from its weights with init_from=",
        )


def build_run(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """THE builder: a composed ``train`` config (without its ``hydra`` node) -> a checked RunConfig.

    Every key must be in the schema and have its value in the composition (``complete``): Hydra merged the
    dataclasses' defaults in (:func:`mhaexp.config.register_defaults`), so a missing key means a
    composition that bypassed them.
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    names = [f.name for f in fields(RunConfig) if f.name != "resolved"]
    for key in raw:
        if key not in names:
            raise ConfigError(str(key), raw[key], f"unknown key; {unknown_key_hint(str(key), names)}")
    for key in names:
        if key not in raw:
            raise ConfigError(key, None, "missing: conf/train.yaml and its groups must give it a value")
    check_mapping(RunConfig, raw, "")  # top-level values first: logger.name interpolates name
    data = build(DataConfig, raw["data"], "data", complete=True)
    vocab = data.n_vocab
    if raw["init_from"] is not None:  # the checkpoint's table, which may be padded past the data's ids
        from mhaexp.training.init_from import init_vocab_size  # reads the checkpoint, so it needs torch

        vocab = init_vocab_size(raw["init_from"], data.n_vocab)
    model = build(ModelConfig, raw["model"], "model", complete=True, vocab_size=vocab)
    groups = {
        "trainer": build(TrainerConfig, raw["trainer"], "trainer", complete=True),
        "optim": build(OptimConfig, raw["optim"], "optim", complete=True),
        "analysis": build(AnalysisConfig, raw["analysis"], "analysis", complete=True),
        "pruning": build(PruningConfig, raw["pruning"], "pruning", complete=True),
        "logger": build(LoggerConfig, raw["logger"], "logger", complete=True),
        "sweep": build(SweepConfig, raw["sweep"], "sweep", complete=True),
    }
    top = {k: raw[k] for k in ("name", "seed", "init_from", "gqa_init", "resume")}
    return RunConfig(model=model, data=data, **groups, **top, resolved=raw)


# The groups whose dataclass is their table of defaults (conf/train.yaml merges these under each option).
# model and analysis still state every key in their YAML.
TABLED = {
    "data": DataConfig,
    "trainer": TrainerConfig,
    "optim": OptimConfig,
    "pruning": PruningConfig,
    "logger": LoggerConfig,
}
for _group, _cls in TABLED.items():
    register_defaults(_group, _cls)
