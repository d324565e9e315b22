"""Typed run configuration: data, model, training and evaluation, with the paper's presets.

A run is fully described by one :class:`RunConfig`. It is saved to ``RUN_DIR/config.yaml``
and loaded back from there, so a run directory is enough to re-evaluate or resume a run.
Presets (:func:`preset`) reproduce Meta's released configs (SPEC §3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

DATASETS = ("ml-1m", "ml-20m", "ml-100k", "ml-latest-small", "amzn-books")
MODELS = ("sasrec", "hstu", "hstu-large")
PROTOCOLS = ("paper", "strict")


class ConfigError(ValueError):
    """A configuration value or YAML file is wrong; the message names the field."""


@dataclass
class TableConfig:
    """A user's own interaction log (CSV or Parquet) and the names of its columns."""

    path: str = ""
    format: Literal["auto", "csv", "parquet"] = "auto"
    user_col: str = "user_id"
    item_col: str = "item_id"
    timestamp_col: str = "timestamp"
    rating_col: str | None = None  # optional rating / action column
    item_feature_cols: list[str] = field(default_factory=list)  # categorical item side-info
    user_feature_cols: list[str] = field(default_factory=list)  # slowly changing user attributes
    separator: str = ","  # CSV only


@dataclass
class DataConfig:
    """Which data set to read and how to turn it into per-user sequences."""

    name: str = "ml-1m"  # one of DATASETS, or "custom" with `table` set
    data_dir: str = "data"
    cache_dir: str | None = None  # default: DATA_DIR/.genrec-cache
    max_seq_len: int = 200  # N: the model sees at most the last N events
    min_seq_len: int = 3  # users with fewer events are dropped (need train + test targets)
    max_users: int | None = None  # keep only the first users (quick runs)
    table: TableConfig | None = None


@dataclass
class ModelConfig:
    """Encoder shape. ``kind`` picks the architecture; the rest is shared vocabulary."""

    kind: Literal["hstu", "sasrec"] = "hstu"
    embedding_dim: int = 50  # d
    num_layers: int = 2
    num_heads: int = 1
    attention_dim: int = 50  # dqk per head
    linear_dim: int = 50  # dv per head (HSTU); SASRec feed-forward width
    input_dropout: float = 0.2
    dropout: float = 0.2  # on layer outputs (before Linear_2 in HSTU)
    attn_dropout: float = 0.0  # HSTU attention-weights dropout (Meta: 0.0)
    # HSTU's pointwise attention is divided by a length. "padded" matches Meta's code:
    # max_seq_len + attn_norm_extra (211 on MovieLens); "length" divides by each user's length.
    attn_norm: Literal["padded", "length"] = "padded"
    attn_norm_extra: int = 11
    position_bias: bool = True  # rab position term
    time_bias: bool = True  # rab time term
    num_time_buckets: int = 128  # bucket ids 0..num_time_buckets (inclusive), SPEC §3
    time_bucket_base: float = 0.301
    max_seq_len: int = 200  # filled from DataConfig.max_seq_len by `RunConfig.resolved()`


@dataclass
class TrainConfig:
    """Generative training: every position of every sequence is a target (SPEC §2)."""

    epochs: int = 101
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    loss: Literal["sampled_softmax", "full_softmax"] = "sampled_softmax"
    num_negatives: int = 128
    in_batch_negatives: bool = False
    # one negative draw shared by every position of a batch instead of one per position
    # (same marginal distribution, far less memory traffic; off = Meta's code)
    shared_negatives: bool = False
    temperature: float = 0.05
    grad_clip: float | None = None  # max grad norm; None = off (as the paper)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast to bf16 on CUDA (ignored on CPU)
    stochastic_length_alpha: float | None = None  # SPEC §5; None = off
    eval_every: int = 5  # epochs between evaluations (and checkpoint selection)
    checkpoint_every: int = 1  # epochs between checkpoints
    num_threads: int | None = None  # torch intra-op threads on CPU; None = torch default
    # on CPU, keep freed memory in the process for reuse instead of page-faulting it back every
    # step (glibc mallopt, process-wide; see genrec/train/host.py)
    retain_freed_memory: bool = True
    progress: bool = True
    # torch.compile the encoder and the loss: None = on CPU only (where it pays most and the
    # Triton kernel is not in play); falls back to eager with a warning if compiling fails
    compile: bool | None = None


@dataclass
class EvalConfig:
    """Full-ranking retrieval evaluation (SPEC §4)."""

    protocol: Literal["paper", "strict"] = "paper"
    ks: tuple[int, ...] = (1, 10, 50, 200)
    # users per forward pass. 128 by default; the HSTU presets take 512 (see preset())
    batch_size: int = 128
    exclude_history: bool = True


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str | None = None  # e.g. "ml-1m/hstu", informational

    def resolved(self) -> RunConfig:
        """A copy with derived fields filled in and every field validated."""
        cfg = dataclasses.replace(self, model=dataclasses.replace(self.model))
        cfg.model.max_seq_len = cfg.data.max_seq_len
        validate(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        return _from_plain(cls, raw, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        base = raw.pop("base", None)  # `base: ml-1m/hstu` starts from a preset
        cfg = preset(*base.split("/")) if base else cls()
        merged = _deep_merge(cfg.to_dict(), raw)
        return _from_plain(cls, merged, str(path))


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError naming the first bad field."""
    d, m, t, e = cfg.data, cfg.model, cfg.train, cfg.eval
    checks = [
        (d.name in DATASETS or (d.name == "custom" and d.table is not None),
         "data.name", f"must be one of {DATASETS} or 'custom' with data.table set"),
        (d.max_seq_len >= 1, "data.max_seq_len", "must be >= 1"),
        (d.min_seq_len >= 2, "data.min_seq_len", "must be >= 2 (one input and one target)"),
        (d.max_users is None or d.max_users >= 1, "data.max_users", "must be >= 1"),
        (m.kind in ("hstu", "sasrec"), "model.kind", "must be 'hstu' or 'sasrec'"),
        (m.embedding_dim >= 1 and m.num_layers >= 1 and m.num_heads >= 1,
         "model", "embedding_dim, num_layers and num_heads must be >= 1"),
        (m.attn_norm in ("padded", "length"), "model.attn_norm", "must be 'padded' or 'length'"),
        (0 <= m.dropout < 1 and 0 <= m.input_dropout < 1, "model.dropout", "must be in [0, 1)"),
        (t.epochs >= 0, "train.epochs", "must be >= 0"),
        (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (t.loss in ("sampled_softmax", "full_softmax"), "train.loss",
         "must be 'sampled_softmax' or 'full_softmax'"),
        (t.num_negatives >= 1, "train.num_negatives", "must be >= 1"),
        (t.temperature > 0, "train.temperature", "must be > 0"),
        (t.stochastic_length_alpha is None or 1 < t.stochastic_length_alpha <= 2,
         "train.stochastic_length_alpha", "must be in (1, 2] or null"),
        (t.eval_every >= 1, "train.eval_every", "must be >= 1"),
        (e.protocol in PROTOCOLS, "eval.protocol", f"must be one of {PROTOCOLS}"),
        (len(e.ks) > 0 and all(k >= 1 for k in e.ks), "eval.ks", "must be positive integers"),
    ]
    if m.kind == "sasrec":
        checks.append((m.embedding_dim % m.num_heads == 0, "model.num_heads",
                       "must divide model.embedding_dim for SASRec"))
    for ok, name, why in checks:
        if not ok:
            raise ConfigError(f"{name} {why}")


# ---------------------------------------------------------------------------------------------
# Presets: Meta's released configs (SPEC §3). ml-100k and ml-latest-small use the ML-1M shapes.

_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "ml-1m": {"max_seq_len": 200},
    "ml-100k": {"max_seq_len": 200},
    "ml-latest-small": {"max_seq_len": 200},
    "ml-20m": {"max_seq_len": 200},
    "amzn-books": {"max_seq_len": 50},
}

_MODEL_SHAPES: dict[tuple[str, str], dict[str, Any]] = {
    # (dataset family, model): d, layers, heads, dqk = dv
    ("ml", "sasrec"): dict(kind="sasrec", embedding_dim=50, num_layers=2, num_heads=1,
                           attention_dim=50, linear_dim=50),
    ("ml", "hstu"): dict(kind="hstu", embedding_dim=50, num_layers=2, num_heads=1,
                         attention_dim=50, linear_dim=50),
    ("ml", "hstu-large"): dict(kind="hstu", embedding_dim=50, num_layers=8, num_heads=2,
                               attention_dim=25, linear_dim=25),
    ("ml-20m", "sasrec"): dict(kind="sasrec", embedding_dim=256, num_layers=2, num_heads=1,
                               attention_dim=256, linear_dim=256),
    ("ml-20m", "hstu"): dict(kind="hstu", embedding_dim=256, num_layers=2, num_heads=1,
                             attention_dim=256, linear_dim=256),
    ("ml-20m", "hstu-large"): dict(kind="hstu", embedding_dim=256, num_layers=16, num_heads=8,
                                   attention_dim=32, linear_dim=32),
    ("books", "sasrec"): dict(kind="sasrec", embedding_dim=64, num_layers=2, num_heads=1,
                              attention_dim=64, linear_dim=64, dropout=0.5, input_dropout=0.5),
    ("books", "hstu"): dict(kind="hstu", embedding_dim=64, num_layers=2, num_heads=1,
                            attention_dim=64, linear_dim=64, dropout=0.5, input_dropout=0.5),
    ("books", "hstu-large"): dict(kind="hstu", embedding_dim=64, num_layers=16, num_heads=8,
                                  attention_dim=8, linear_dim=8, dropout=0.5, input_dropout=0.5),
}


def preset(dataset: str, model: str = "hstu") -> RunConfig:
    """The paper's config for `dataset` × `model` (e.g. ``preset("ml-1m", "hstu-large")``)."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown data set {dataset!r}; choose one of {DATASETS}")
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; choose one of {MODELS}")
    family = {"ml-20m": "ml-20m", "amzn-books": "books"}.get(dataset, "ml")
    data = DataConfig(name=dataset, **_DATASET_DEFAULTS[dataset])
    train = TrainConfig()
    if family == "books":
        train.num_negatives = 512
    cfg = RunConfig(data=data, model=ModelConfig(**_MODEL_SHAPES[(family, model)]), train=train,
                    preset=f"{dataset}/{model}")
    if cfg.model.kind == "hstu":
        # On a CPU, HSTU's layers run one sequence at a time at inference (genrec.ops.layer),
        # so a larger evaluation batch only saves per-batch work: ML-1M HSTU-large 0.79 s
        # against 0.83 s with 128 users, for 581 against 487 MiB peak RSS (evaluation alone,
        # CPU-2). SASRec's steps run over the whole batch and were slower past 128.
        cfg.eval.batch_size = 512
    return cfg.resolved()


# ---------------------------------------------------------------------------------------------
# Plain-dict conversion with field-named errors.


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(x) for x in obj]
    return obj


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
             "table": TableConfig}


def _from_plain(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        sub = _SECTIONS.get(name)
        if sub is not None and value is not None:
            kwargs[name] = _from_plain(sub, value, f"{where}: {name}")
        elif name in ("betas", "ks") and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
