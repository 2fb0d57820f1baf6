"""The job file: one pydantic model, validated once at the edge, then trusted.

Every section has defaults, so the smallest job file is `name: x`. Unknown fields are errors,
reported with their path (`search.max_trails: unknown field`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nascloud.errors import UsageError

TASKS = ("image_classification", "structured_data_classification", "text_classification")
CLOUDS = ("local", "aws", "gcp")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchSpace(_Section):
    """Constraints on the architectures AutoKeras may try: constraining the space is what makes a
    search affordable (the seed's main lesson)."""

    block_type: list[Literal["vanilla", "resnet", "xception", "efficient"]] = ["vanilla"]
    num_blocks: tuple[int, int] = (1, 2)  # depth range, inclusive
    num_layers: tuple[int, int] = (1, 2)  # conv layers per block (vanilla), inclusive
    kernel_size: list[int] = [3]
    normalize: list[bool] = [False]  # normalisation choices
    dropout: list[float] = [0.0, 0.25]
    augment: bool = False

    @model_validator(mode="after")
    def _allows_something(self) -> "SearchSpace":
        for name in ("block_type", "kernel_size", "normalize", "dropout"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: the search space allows nothing; list at least one choice")
        for name in ("num_blocks", "num_layers"):
            low, high = getattr(self, name)
            if low < 1 or high < low:
                raise ValueError(f"{name} must be [min, max] with 1 <= min <= max, got [{low}, {high}]")
        if any(k < 1 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError("kernel_size values must be odd positive integers (3, 5, 7)")
        if any(not 0.0 <= d < 1.0 for d in self.dropout):
            raise ValueError("dropout values must be in [0, 1)")
        return self


class SearchSection(_Section):
    task: Literal[TASKS] = "image_classification"  # type: ignore[valid-type]
    # sklearn:digits | sklearn:wine | sklearn:breast_cancer | a folder of class sub-folders | x.csv | x.npz
    data: str = "sklearn:digits"
    label_column: Optional[str] = None  # for CSV data
    max_trials: int = Field(4, gt=0)
    epochs: int = Field(3, gt=0)
    objective: str = "val_accuracy"
    seed: int = 1
    data_fraction: float = Field(1.0, gt=0.0, le=1.0)
    space: SearchSpace = SearchSpace()
    max_consecutive_failed_trials: int = Field(3, gt=0)
    # Workload for `estimate` when no calibration exists: samples per epoch and seconds per epoch
    # on the reference GPU (T4). `nascloud calibrate` measures the latter.
    samples: Optional[int] = Field(None, gt=0)
    seconds_per_epoch: Optional[float] = Field(None, gt=0)
    trial_overhead_seconds: float = Field(30.0, ge=0)


class ComputeSection(_Section):
    cloud: Literal[CLOUDS] = "local"  # type: ignore[valid-type]
    gpu: Optional[str] = "T4"  # None: CPU only (the local provider's default search)
    spot: bool = True
    provisioning: Literal["spot", "preemptible"] = "spot"  # GCP: Spot VM or legacy preemptible (24 h cap)
    region: Optional[str] = None
    zone: Optional[str] = None
    instance_type: Optional[str] = None  # pin an offer; otherwise the estimate's cheapest that fits
    image: Optional[str] = None  # AMI id / GCE image; otherwise a public lookup at launch
    price_per_hour: Optional[float] = Field(None, ge=0)  # overrides the catalog for the ledger and cap
    ssh_cidr: Optional[str] = None  # who may reach port 22; default: the caller's public address /32
    on_demand_after_preemptions: Optional[int] = Field(None, ge=0)  # fall back to on-demand after N
    interruptions_per_hour: Optional[float] = Field(None, ge=0)  # override the catalog's default rate
    workers: int = Field(1, ge=1, le=1)  # one instance per search for now


class CheckpointSection(_Section):
    bucket: str = "file://./nascloud-bucket"
    interval_minutes: Union[float, Literal["auto"]] = "auto"  # auto: Young/Daly from the offer
    keep: int = Field(3, ge=1)
    lease_minutes: float = Field(30.0, gt=0)  # the agent's dead-man's switch

    @field_validator("interval_minutes")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and value <= 0:
            raise ValueError("must be 'auto' or a positive number of minutes")
        return value


class BudgetSection(_Section):
    usd: Optional[float] = Field(None, gt=0)
    alerts: list[float] = [0.5, 0.8, 1.0]  # fractions of usd
    max_hours: Optional[float] = Field(None, gt=0)
    webhook: Optional[str] = None  # Slack-compatible incoming webhook URL

    @field_validator("alerts")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if any(a <= 0 for a in value):
            raise ValueError("alert thresholds must be positive fractions of the budget, e.g. [0.5, 0.8, 1.0]")
        if list(value) != sorted(set(value)):
            raise ValueError("alert thresholds must be in increasing order without repeats")
        return value


class JobSpec(_Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
    search: SearchSection = SearchSection()
    compute: ComputeSection = ComputeSection()
    checkpoint: CheckpointSection = CheckpointSection()
    budget: BudgetSection = BudgetSection()

    def with_overrides(self, **sections: dict) -> "JobSpec":
        """A copy with some fields of some sections replaced, validated again."""
        data = self.model_dump()
        for section, fields in sections.items():
            data[section].update({k: v for k, v in fields.items() if v is not None})
        return parse_job(data, source="overrides")


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown field"
    if first["type"] == "missing":
        return f"{path}: required field is missing"
    message = re.sub(r"^Value error, ", "", first["msg"])
    return f"{path}: {message}"


def parse_job(data: object, source: str = "job file") -> JobSpec:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping with at least `name:`, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        raise UsageError(f"{source}: {_describe(error)}") from None


def load_job(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"job file {path} not found; give the path to a job YAML (see examples/)") from None
    except OSError as error:
        raise UsageError(f"cannot read job file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML{where}") from None
    return parse_job(data, source=str(path))
