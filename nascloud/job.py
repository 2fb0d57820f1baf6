"""The job file: one pydantic model, validated once at the edge, then trusted.

Every section has defaults, so the smallest job file is `name: xy`. Unknown fields are errors,
reported with their path (`search.max_trails: unknown field`). Every number is finite and inside a
stated range (`budget.usd: must be a number of dollars in (0, 1,000,000], got inf`): a value no one
means (inf, NaN, 1e308) is refused here, before it can launch anything or reach a ledger.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any, Hashable, Literal, Optional, Sequence, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo,
                      field_validator, model_serializer, model_validator)

from nascloud.errors import UsageError

TASKS = ("image_classification", "structured_data_classification")
# The metrics a classification search produces on its validation split, and the way each is better.
OBJECTIVES = {"val_accuracy": "max", "val_balanced_accuracy": "max", "val_loss": "min"}
# A weighted objective's terms (each higher is better; model_size is defined in the README's objective section).
WEIGHTED_TERMS = ("val_accuracy", "val_balanced_accuracy", "model_size")
WEIGHTED_OBJECTIVE = "val_weighted_score"  # the tuner's objective name for a weighted objective
MAX_SEEDS = 20
CLOUDS = ("local", "aws", "gcp")
SSH_NARROWEST_PREFIX = 16  # compute.ssh_cidr: a wider range needs compute.ssh_allow_wide


def _show(number: float) -> str:
    return f"{number:,.0f}" if float(number).is_integer() else f"{number:g}"


def Number(what: str = "a number", *, gt: Optional[float] = None, ge: Optional[float] = None,
           lt: Optional[float] = None, le: Optional[float] = None, whole: bool = False) -> Any:
    """A finite number in a stated range (whole: an integer), as a pydantic type whose message states
    the range, e.g. `must be a number of hours in (0, 8,760], got inf`. One lower and one upper bound.
    Parsed as a float first, so that inf, NaN and 2.5 get this message in whole-number fields too."""
    low, high = (gt, True) if gt is not None else (ge, False), (lt, True) if lt is not None else (le, False)
    interval = f"{'(' if low[1] else '['}{_show(low[0])}, {_show(high[0])}{')' if high[1] else ']'}"

    def not_bool(value):
        if isinstance(value, bool):  # pydantic would read true as 1: no one means a count of `true`
            raise ValueError(f"must be {what} in {interval}, got {str(value).lower()}")
        return value

    def check(value: float):
        inside = (math.isfinite(value) and (value > low[0] if low[1] else value >= low[0])
                  and (value < high[0] if high[1] else value <= high[0]) and (value.is_integer() or not whole))
        if not inside:
            raise ValueError(f"must be {what} in {interval}, got {value:g}")
        return int(value) if whole else value

    return Annotated[float, BeforeValidator(not_bool), AfterValidator(check)]


Whole = Number("a whole number", ge=1, le=10_000, whole=True)
Fraction = Number("a fraction", gt=0, le=1)
Depth = Number("a whole number", ge=1, le=10, whole=True)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchSpace(_Section):
    """Constraints on the architectures AutoKeras may try: constraining the space is what makes a
    search affordable (the seed's main lesson)."""

    block_type: list[Literal["vanilla", "resnet", "xception", "efficient"]] = ["vanilla"]
    num_blocks: tuple[Depth, Depth] = (1, 2)  # depth range, inclusive
    num_layers: tuple[Depth, Depth] = (1, 2)  # conv layers per block (vanilla), inclusive
    kernel_size: list[Number("a whole number", ge=1, le=15, whole=True)] = [3]
    normalize: Optional[list[bool]] = None  # normalisation choices; None: on for tables, off for images
    dropout: list[Number("a fraction", ge=0, lt=1)] = [0.0, 0.25]
    augment: bool = False

    @model_validator(mode="after")
    def _allows_something(self) -> "SearchSpace":
        for name in ("block_type", "kernel_size", "normalize", "dropout"):
            if getattr(self, name) == []:
                raise ValueError(f"{name} is empty: the search space allows nothing; list at least one choice")
        for name in ("num_blocks", "num_layers"):
            low, high = getattr(self, name)
            if high < low:
                raise ValueError(f"{name} must be [min, max] with 1 <= min <= max, got [{low}, {high}]")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError("kernel_size values must be odd positive integers (3, 5, 7)")
        return self


Seed = Number("a whole number", ge=0, le=2**32 - 1, whole=True)  # numpy's seed range


class SearchSection(_Section):
    task: Literal[TASKS] = "image_classification"  # type: ignore[valid-type]
    # sklearn:digits | sklearn:wine | sklearn:breast_cancer | a folder of class sub-folders | x.csv | x.npz
    data: str = "sklearn:digits"
    label_column: Optional[str] = None  # for CSV data
    max_trials: Whole = 4
    epochs: Whole = 3
    # A metric name (see OBJECTIVES), or weights over WEIGHTED_TERMS summing to 1, e.g.
    # {val_accuracy: 0.7, model_size: 0.3}.
    objective: Union[str, dict[str, Number("a weight", gt=0, le=1)]] = "val_accuracy"
    seed: Seed = 1
    seeds: Optional[list[Seed]] = None  # the same search once per seed, inside one job
    class_weight: Optional[Literal["balanced"]] = None  # balanced: each class weighs as much in training
    data_fraction: Fraction = 1.0
    space: SearchSpace = SearchSpace()
    max_consecutive_failed_trials: Whole = 3
    # Workload for `estimate` when no calibration exists: samples per epoch and seconds per epoch
    # on the reference GPU (T4). `nascloud calibrate` measures the latter.
    samples: Optional[Number("a whole number", ge=1, le=1e9, whole=True)] = None
    seconds_per_epoch: Optional[Number("a number of seconds", gt=0, le=7 * 86400)] = None
    # None: measured (the job history, `nascloud calibrate`), else the catalog's default (terms.csv, 3 s)
    trial_overhead_seconds: Optional[Number("a number of seconds", ge=0, le=86400)] = None

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value):
        if isinstance(value, str):
            if value not in OBJECTIVES:
                raise ValueError(f"{value!r} is not a metric a classification search produces; use one of "
                                 f"{', '.join(OBJECTIVES)}, or weights such as {{val_accuracy: 0.7, model_size: 0.3}}")
            return value
        unknown = [name for name in value if name not in WEIGHTED_TERMS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} cannot be weighted; the terms are {', '.join(WEIGHTED_TERMS)}")
        if not any(name != "model_size" for name in value):
            raise ValueError("a weighted objective needs an accuracy term beside model_size "
                             "(e.g. {val_accuracy: 0.7, model_size: 0.3})")
        if abs(sum(value.values()) - 1) > 1e-6:
            raise ValueError(f"the weights must sum to 1, got {sum(value.values()):g}")
        return value

    @model_validator(mode="after")
    def _one_way_to_seed(self) -> "SearchSection":
        if self.seeds is not None:
            if not 1 <= len(self.seeds) <= MAX_SEEDS:
                raise ValueError(f"seeds: list 1 to {MAX_SEEDS} seeds, got {len(self.seeds)}")
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds: {self.seeds} repeats a seed; each seed runs once, list each once")
            if "seed" in self.model_fields_set:
                raise ValueError("give seed or seeds, not both")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        if self.seeds is not None:
            data.pop("seed", None)  # the default seed beside seeds would be refused when the dump is read back
        return data

    @property
    def seed_list(self) -> list[int]:
        """The seeds the job runs, in order (one search each)."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @property
    def job_trials(self) -> int:
        """The trials of the whole job: max_trials for each seed."""
        return self.max_trials * len(self.seed_list)

    @property
    def objective_name(self) -> str:
        """The tuner's objective: the metric, or WEIGHTED_OBJECTIVE for weights."""
        return self.objective if isinstance(self.objective, str) else WEIGHTED_OBJECTIVE

    @property
    def maximize(self) -> bool:
        return isinstance(self.objective, dict) or OBJECTIVES[self.objective] == "max"

    @property
    def normalize_choices(self) -> list[bool]:
        """Feature normalisation choices: a table's columns span orders of magnitude, so on by default."""
        if self.space.normalize is not None:
            return list(self.space.normalize)
        return [self.task == "structured_data_classification"]


class ComputeSection(_Section):
    cloud: Literal[CLOUDS] = "local"  # type: ignore[valid-type]
    gpu: Optional[str] = "T4"  # None: CPU only (the local provider's default search)
    spot: bool = True
    provisioning: Literal["spot", "preemptible"] = "spot"  # GCP: Spot VM or legacy preemptible (24 h cap)
    region: Optional[str] = None
    zone: Optional[str] = None
    instance_type: Optional[str] = None  # pin an offer; otherwise the estimate's cheapest that fits
    image: Optional[str] = None  # AMI id / GCE image; otherwise a public lookup at launch
    # overrides the catalog for the ledger and cap (0: the local provider's rehearsal)
    price_per_hour: Optional[Number("a number of dollars an hour", ge=0, le=1000)] = None
    # Declared before ssh_cidr, whose check reads it.
    ssh_allow_wide: bool = False  # admit SSH from a range wider than /16 (never from the whole internet)
    ssh_cidr: Optional[str] = None  # who may reach port 22 (IPv4); default: the caller's public address /32
    ssh_sudo: bool = False  # the cloud instance's SSH login may sudo (root); off, it is a plain user
    # fall back to on-demand after N preemptions
    on_demand_after_preemptions: Optional[Number("a whole number", ge=0, le=1000, whole=True)] = None
    interruptions_per_hour: Optional[Number("a rate per hour", ge=0, le=100)] = None  # override the catalog's
    workers: Number("a whole number", ge=1, le=1, whole=True) = 1  # one instance per search for now

    @field_validator("ssh_cidr")
    @classmethod
    def _narrow_ipv4(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        if value is None:
            return None
        example = "give your address as 203.0.113.7/32"
        try:
            network = ipaddress.ip_network(value)
        except ValueError as error:
            raise ValueError(f"{value!r} is not a network ({error}); {example}") from None
        if network.version != 4:
            raise ValueError(f"{value} is IPv6; the rule is IPv4: {example}")
        if network.prefixlen == 0:
            raise ValueError(f"{value} would open SSH to the whole internet; {example}")
        if network.prefixlen < SSH_NARROWEST_PREFIX and not info.data.get("ssh_allow_wide"):
            raise ValueError(f"{value} admits {network.num_addresses:,} addresses to SSH; {example}, or set "
                             f"compute.ssh_allow_wide: true to admit a range wider than /{SSH_NARROWEST_PREFIX}")
        return str(network)


MAX_INTERVAL_MINUTES = 7 * 24 * 60


class CheckpointSection(_Section):
    bucket: str = "file://./nascloud-bucket"
    interval_minutes: Union[Literal["auto"], float] = "auto"  # auto: Young/Daly from the offer
    keep: Number("a whole number", ge=1, le=100, whole=True) = 3

    @field_validator("interval_minutes", mode="before")
    @classmethod
    def _auto_or_minutes(cls, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and 0 < value <= MAX_INTERVAL_MINUTES):
            raise ValueError(f"must be 'auto' or a number of minutes in (0, {MAX_INTERVAL_MINUTES:,}], got {value!r}")
        return value


class BudgetSection(_Section):
    usd: Optional[Number("a number of dollars", gt=0, le=1e6)] = None
    alerts: list[Number("a fraction of the budget", gt=0, le=1)] = [0.5, 0.8, 1.0]  # fractions of usd
    max_hours: Optional[Number("a number of hours", gt=0, le=8760)] = None  # a year
    webhook: Optional[str] = None  # Slack-compatible incoming webhook URL

    @field_validator("alerts")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if list(value) != sorted(set(value)):
            raise ValueError("alert thresholds must be in increasing order without repeats")
        return value


JOB_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")  # job ids and cloud resource names are built from it


def _job_name(value: str) -> str:
    if not JOB_NAME.match(value):
        raise ValueError("must be 2-40 lowercase letters, digits and hyphens, starting with a letter and not "
                         f"ending with a hyphen (it names the job's cloud resources), got {value!r}")
    return value


class JobSpec(_Section):
    name: Annotated[str, AfterValidator(_job_name)]
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


def check_field(field: str, value: Any, flag: Optional[str] = None) -> Any:
    """`value` checked by the job file's own rule for `field` (`budget.usd`): for a flag that sets that
    field (the error names `flag`), and for a value stored before the rule existed (a job row or bundle
    written by an older version: a view shows such a job instead of failing on it)."""
    section, name = field.split(".")
    try:
        checked = JobSpec.model_fields[section].annotation.model_validate({name: value})
    except ValidationError as error:
        message = _describe(error).split(": ", 1)[1]
        raise UsageError(f"{flag} {message}" if flag else f"{field}: {message}") from None
    return getattr(checked, name)


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


def load_job(path: str | Path, settings: Sequence[str] = ()) -> JobSpec:
    """The job file, then `--set KEY=VALUE` settings over it (each validated as the file is)."""
    spec = _read_job(Path(path))
    return with_settings(spec, settings) if settings else spec


PLACEHOLDER_BUCKET = "YOUR-BUCKET"  # what the examples' job files say until the user sets theirs


def is_placeholder(bucket: str) -> bool:
    return PLACEHOLDER_BUCKET.lower() in bucket.lower()


def parseable(bucket: str) -> str:
    """The bucket URL with the placeholder (upper case: no bucket's name) in lower case, so that it parses."""
    return bucket.replace(PLACEHOLDER_BUCKET, PLACEHOLDER_BUCKET.lower())


def placeholder_problem(bucket: str) -> str:
    """What launch refuses and check fails on for the examples' placeholder bucket."""
    return (f"checkpoint.bucket {bucket} is the example's placeholder; set your own bucket in the job file or with "
            "--bucket (e.g. --bucket s3://my-bucket/nascloud)")


def with_settings(spec: JobSpec, settings: Sequence[str]) -> JobSpec:
    """`--set search.max_trials=40`: a dotted path into the job file and a value as YAML reads it. A bad path
    or value is a usage error naming the setting."""
    data = spec.model_dump()
    paths = []
    for setting in settings:
        path, equals, text = setting.partition("=")
        if not equals or not path:
            raise UsageError(f"--set expects KEY=VALUE, like search.max_trials=40; got {setting!r}")
        value = _load_yaml(text, f"--set {path}", "write the value as in the job file")
        *sections, field = path.split(".")
        node = data
        for depth, key in enumerate(sections):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {path}: {'.'.join(sections[:depth + 1])} is a value, not a section")
        node[field] = value
        paths.append(path)
    search = data.get("search")
    for given, other in (("seeds", "seed"), ("seed", "seeds")):  # a setting of one replaces the file's other
        if f"search.{given}" in paths and f"search.{other}" not in paths and isinstance(search, dict):
            search.pop(other, None)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        where = ".".join(str(p) for p in error.errors()[0]["loc"])
        # The setting the error is about: the one whose path leads to (or from) the failing field.
        path = next((p for p in paths if p == where or where.startswith(p + ".") or p.startswith(where + ".")),
                    None)
        message = _describe(error).split(": ", 1)[1]
        raise UsageError(f"--set {path or where}: {message}") from None


def _read_job(path: Path) -> JobSpec:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"job file {path} not found; give the path to a job YAML (see examples/)") from None
    except OSError as error:
        raise UsageError(f"cannot read job file {path}: {error.strerror}") from None
    return parse_job(_load_yaml(text, str(path), "see examples/ for job files"), source=str(path))


class _DuplicateKey(yaml.YAMLError):
    pass


class _JobLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the later one silently."""

    def construct_mapping(self, node, deep=False):
        lines = {}  # key: the line it was first given on
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then one of base's keys is an override
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in lines:
                both = f"line {line}" if lines[key] == line else f"lines {lines[key]} and {line}"
                raise _DuplicateKey(f"{key!r} is given twice ({both}) and the later would silently win; keep one")
            if isinstance(key, Hashable):
                lines[key] = line
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, where: str, hint: str) -> Any:
    """`text` (a job file, a --set value) as YAML; not YAML, nested too deeply or a key given twice is a usage
    error at `where`, with `hint`."""
    try:
        return yaml.load(text, Loader=_JobLoader)
    except _DuplicateKey as error:
        raise UsageError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise UsageError(f"{where}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}; {hint}") from None
    except RecursionError:  # PyYAML builds nested values recursively
        raise UsageError(f"{where}: nested too deeply to be a job file's value; {hint}") from None
