"""The user's contract: one YAML file per sync, validated into a SyncSpec."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from wsync_dagster.data_model import DataModelError, change_model_table, check_read_only_select
from wsync_dagster.destinations.config import (
    DESTINATION_TYPES,
    AmplitudeDestination,
    Destination,
    MParticleDestination,
    check_unique_names,
)
from wsync_dagster.durations import parse_duration
from wsync_dagster.identities import IDENTITY_PRIORITY
from wsync_dagster.sync_yaml import YamlFileError, read_yaml, shown_key
from wsync_dagster.warehouses import CONNECTIONS, ConnectionSpec, warehouse_types
from wsync_dagster.warehouses.identity import connection_config

EVENT_TYPES = ("custom_event", "screen_view", "commerce_event")
CUSTOM_EVENT_TYPES = (
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "media",
    "other",
)
EVENT_FIELDS = (
    "events.event_type",
    "events.data.event_name",
    "events.data.custom_event_type",
    "events.data.timestamp_unixtime_ms",
    "events.data.source_message_id",
)
UNMAPPED = "$unmapped"
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
NAME_MAX_LENGTH = 128
_SECRET_KEY = re.compile(
    r"password|passwd|passphrase|secret|token|api_?key|private_key|credential|access_key", re.IGNORECASE
)
# A key that names where a secret is kept (private_key_path) holds a path, not the secret.
_PATH_KEY = re.compile(r"_path\Z", re.IGNORECASE)
# A month is taken as 31 days: the delay check and the range sensors' interval need only an upper bound.
_FREQUENCY_SPAN = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1),
    "monthly": timedelta(days=31),
}
# Partitions step a day or a month past either end of a sync's history: keep it far from datetime's limits.
_EARLIEST, _LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)
_DATE_RANGE = "a date from 1900-01-01 to 2999-12-31"


class SyncSpecError(ValueError):
    """A sync file that cannot be used; the message names the file, the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# One model per warehouse type (wsync_dagster/warehouses/), told apart by `type`.
Connection = Annotated[Union[CONNECTIONS], Field(discriminator="type")]  # noqa: UP007


def _check_field(field: str, column: str | None) -> str:
    """Validate a mapping target; `$unmapped` goes with `*` targets only."""
    wildcard = field == "*" or field.endswith(".*")
    if column == UNMAPPED and not wildcard:
        raise ValueError(
            f"{UNMAPPED} maps to a wildcard field: '*', 'user_attributes.*' or "
            "'events.data.custom_attributes.*'"
        )
    if wildcard and column != UNMAPPED:
        raise ValueError(f"a '*' field takes column {UNMAPPED}")
    if field in ("*", "user_attributes.*", "events.data.custom_attributes.*") or field in EVENT_FIELDS:
        return field
    if field.startswith("user_identities."):
        if field.removeprefix("user_identities.") not in IDENTITY_PRIORITY:
            raise ValueError(
                f"unknown identity '{field}'; allowed: user_identities.<one of "
                f"{', '.join(IDENTITY_PRIORITY)}>"
            )
        return field
    for prefix in ("user_attributes.", "events.data.custom_attributes."):
        if field.startswith(prefix) and field.removeprefix(prefix):
            return field
    raise ValueError(
        f"unknown field '{field}'; allowed: user_identities.<identity>, user_attributes.<name>, "
        f"events.data.custom_attributes.<name>, {', '.join(EVENT_FIELDS)}, or '*' with {UNMAPPED}"
    )


class ColumnMapping(_Strict):
    """A warehouse column (or $unmapped) into a field."""

    type: Literal["column"]
    column: str
    field: str

    @field_validator("field")
    @classmethod
    def _field(cls, target: str, info: ValidationInfo) -> str:
        return _check_field(target, info.data.get("column"))


class StaticMapping(_Strict):
    """A typed constant into a field."""

    type: Literal["static"]
    value: bool | int | float | str
    field: str

    @field_validator("value", mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        # One line instead of one per member of the union; YAML reads an unquoted 2024-01-01 as a date.
        if isinstance(value, date | time):
            raise ValueError(
                f"a static value is text, a number or true/false; YAML read {value.isoformat()} as a "
                f"{type(value).__name__}: quote it ('{value.isoformat()}')"
            )
        if not isinstance(value, bool | int | float | str):
            raise ValueError(f"a static value is text, a number or true/false, not a {_yaml_kind(value)}")
        return value

    @field_validator("field")
    @classmethod
    def _target(cls, target: str) -> str:
        return _check_field(target, None)

    @model_validator(mode="after")
    def _value_fits_field(self) -> StaticMapping:
        if self.field.startswith("user_identities."):
            raise ValueError("an identity cannot be static: every row would be the same user")
        if self.field == "events.event_type" and self.value not in EVENT_TYPES:
            raise ValueError(f"events.event_type is one of {', '.join(EVENT_TYPES)}")
        if self.field == "events.data.custom_event_type" and self.value not in CUSTOM_EVENT_TYPES:
            raise ValueError(f"events.data.custom_event_type is one of {', '.join(CUSTOM_EVENT_TYPES)}")
        return self


def _yaml_kind(value: Any) -> str:
    """What YAML made of a value, in its own words."""
    return {dict: "mapping", list: "list", type(None): "null"}.get(type(value), type(value).__name__)


class IgnoreMapping(_Strict):
    """A column that is not ingested."""

    type: Literal["ignore"]
    column: str


class ObjectMapping(_Strict):
    """An object target, as in mParticle's mapping editor; declares where the other mappings go."""

    type: Literal["object"]
    field: Literal["user_identities", "user_attributes", "events"]


MappingEntry = Annotated[
    ColumnMapping | StaticMapping | IgnoreMapping | ObjectMapping, Field(discriminator="type")
]


class DataModelSpec(_Strict):
    """The SQL that selects the rows to sync."""

    sql: str


class SyncSettings(_Strict):
    """When and how a sync runs."""

    mode: Literal["full", "incremental", "cdc"]
    iterator: str | None = None
    iterator_type: (
        Literal["timestamp", "date", "timestamp_unixtime_ms", "timestamp_unixtime_s", "integer"] | None
    ) = None
    schedule: Literal["interval", "once", "on_demand"] = "on_demand"
    frequency: Literal["hourly", "daily", "weekly", "monthly"] | None = None
    start: datetime | None = None
    historical_start: datetime | None = None
    # How far before its window a run reads again, so that late rows arrive: a duration for a time iterator,
    # a count of ids for an integer one; None (the default) is one window back, or the previous range.
    lookback: timedelta | int | None = None
    environment: Literal["production", "development"] = "production"
    input_protection: Literal["create_and_update", "update_only", "read_only"] = "create_and_update"
    paused: bool = False
    delay_alert: timedelta | None = None
    mirror: bool = False
    # A mirror run that would remove this sync's attributes from more of the profiles it set is held back.
    mirror_max_removal: float = Field(0.5, ge=0, le=1)
    # Identity and attribute values in the delivery's preview, kept in Dagster's event log (no erasure reaches it).
    preview_values: bool = False

    @field_validator("preview_values", mode="before")
    @classmethod
    def _true_or_false(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            got = repr(value) if isinstance(value, str | int | float) else f"a {_yaml_kind(value)}"
            raise ValueError(
                f"true or false (got {got}); true shows identity and attribute values "
                "in Dagster's preview of changed profiles"
            )
        return value

    @field_validator("start", "historical_start", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime.combine(value, time(), UTC)
        return value

    @field_validator("start", "historical_start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first moment datetime holds
            raise ValueError(_DATE_RANGE) from None
        if not _EARLIEST <= value < _LATEST:
            raise ValueError(_DATE_RANGE)
        return value

    @field_validator("delay_alert", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        is_count = isinstance(value, int) and not isinstance(value, bool)
        if info.data.get("iterator_type") == "integer":
            if not is_count:
                raise ValueError(
                    "an integer iterator's lookback is a count of ids, such as 0 (none) or 1000; "
                    "by default a run reads the previous range again"
                )
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if isinstance(value, timedelta):
            return value
        # A bare 0 is unambiguous: no lookback. Any other bare number lacks its unit.
        if is_count and value == 0:
            return timedelta(0)
        if not isinstance(value, str):
            raise ValueError("a duration such as 0s, 30m, 2h, 1d or 1w")
        return parse_duration(value)

    @model_validator(mode="after")
    def _consistent(self) -> SyncSettings:
        if self.mode == "incremental":
            if not self.iterator:
                raise ValueError("iterator: required when mode is incremental")
            if not self.iterator_type:
                raise ValueError("iterator_type: required when mode is incremental")
        elif self.mode == "full" and (self.iterator or self.iterator_type):
            raise ValueError("iterator/iterator_type: only for mode incremental")
        if self.schedule == "interval" and not self.frequency:
            raise ValueError("frequency: required when schedule is interval (hourly, daily, weekly, monthly)")
        if self.schedule in ("interval", "once") and not self.start:
            raise ValueError(f"start: required when schedule is {self.schedule}")
        if (
            self.mode == "incremental"
            and self.iterator_type != "integer"
            and not (self.historical_start or self.start)
        ):
            raise ValueError("historical_start: required for a time iterator when there is no start")
        if self.start and self.historical_start and self.historical_start > self.start:
            raise ValueError(
                f"historical_start: {_iso(self.historical_start)} is after start {_iso(self.start)}; "
                "history loads from historical_start up to start, so it is on or before start"
            )
        if self.iterator_type == "date" and (
            self.partition_frequency == "hourly" or _has_time_of_day(self.start)
        ):
            raise ValueError(
                "iterator_type: a date iterator needs whole-day windows: frequency daily, weekly or "
                "monthly, and a start at 00:00 UTC"
            )
        if self.frequency == "monthly" and self.start and self.start.day > 28:
            raise ValueError("start: a monthly sync starts on day 1 to 28, so every month has that day")
        if isinstance(self.lookback, timedelta) and self.lookback < timedelta(0):
            raise ValueError("lookback: must not be negative")
        if self.mirror and self.mode != "full":
            raise ValueError("mirror: only for mode full, which reads the whole model each run")
        if "mirror_max_removal" in self.model_fields_set and not self.mirror:
            raise ValueError("mirror_max_removal: only with mirror: true")
        if self.delay_alert is not None and self.delay_alert <= timedelta(0):
            raise ValueError("delay_alert: must be a positive duration such as 2h or 2d")
        return self

    @property
    def partition_frequency(self) -> str:
        """The partition size: frequency, else daily."""
        return self.frequency or "daily"

    @property
    def frequency_span(self) -> timedelta:
        """One interval of the frequency (else daily), a month taken as 31 days."""
        return _FREQUENCY_SPAN[self.partition_frequency]

    @property
    def delay_limit(self) -> timedelta:
        """How old the newest iterator value may be before the data-delay check warns: delay_alert, else twice the frequency."""
        return self.delay_alert or 2 * self.frequency_span

    @property
    def history_start(self) -> datetime:
        """How far back history is loaded: historical_start, else start."""
        return self.historical_start or self.start  # type: ignore[return-value]


def _has_time_of_day(moment: datetime | None) -> bool:
    return moment is not None and moment.time() != time()


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if _has_time_of_day(moment) else moment.date().isoformat()


class Checks(_Strict):
    """Thresholds of the sync's asset checks."""

    max_reject_rate: float = Field(0.05, ge=0, le=1)
    # Over max_reject_rate, a run delivers nothing (instead of delivering and failing the check).
    block_on_reject_rate: bool = False

    @field_validator("block_on_reject_rate", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError("true or false")
        return value


class ProfileStoreDestination(_Strict):
    """The profile store; every sync writes it."""

    type: Literal["profile_store"] = "profile_store"


class SyncSpec(_Strict):
    """One sync: where the rows come from, how they map, when they run."""

    name: str
    description: str = ""
    data_type: Literal["user", "event"]
    connection: Connection
    data_model: DataModelSpec
    mapping: list[MappingEntry] | None = None
    sync: SyncSettings
    destination: ProfileStoreDestination = ProfileStoreDestination()
    # Besides the profile store: platforms that receive what changed (destinations/).
    destinations: list[Destination] = []
    checks: Checks = Checks()
    source_file: Path = Field(Path("."), exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("lower-case letters, digits and _, starting with a letter ([a-z][a-z0-9_]*)")
        if len(name) > NAME_MAX_LENGTH:
            raise ValueError(
                f"at most {NAME_MAX_LENGTH} characters (it names the sync's folder of batch files, and file "
                f"systems allow 255 bytes per name); this one has {len(name)}"
            )
        return name

    @model_validator(mode="after")
    def _read_only_model(self) -> SyncSpec:
        # Parsed in the warehouse's own SQL dialect.
        try:
            check_read_only_select(self.data_model.sql, self.connection.dialect)
        except DataModelError as error:
            raise ValueError(f"data_model.sql: {error}") from None
        return self

    @model_validator(mode="after")
    def _change_feed(self) -> SyncSpec:
        if self.sync.mode != "cdc":
            return self
        if not getattr(self.connection, "change_feed", False):
            raise ValueError(
                f"sync.mode: cdc reads a table's change feed, and a {self.connection.type} connection has "
                "none that wsync reads (delta, databricks and snowflake have): use mode incremental or full"
            )
        if self.sync.iterator or self.sync.iterator_type:
            raise ValueError(
                "sync.iterator/iterator_type: only for mode incremental; cdc reads table versions"
            )
        try:
            change_model_table(self.data_model.sql, self.connection.dialect)
        except DataModelError as error:
            raise ValueError(f"data_model.sql: {error}") from None
        return self

    @model_validator(mode="after")
    def _destination_names(self) -> SyncSpec:
        check_unique_names(self.destinations)
        return self

    @model_validator(mode="after")
    def _event_mapping(self) -> SyncSpec:
        if self.data_type == "event" and not self.mapping:
            raise ValueError("mapping: required for event data (events.data.event_name at least)")
        if self.data_type == "user":
            for entry in self.mapping or []:
                if getattr(entry, "field", "").startswith("events"):
                    raise ValueError(f"mapping: {entry.field} is for data_type event")
        return self

    @property
    def base(self) -> Path:
        """The folder of the sync file: paths in it are relative to this."""
        return self.source_file.parent


def load_sync_file(path: Path) -> SyncSpec:
    """Read and validate one sync file."""
    return _validate(path, _read(path))


def _read(path: Path) -> dict:
    """The file's keys, checked for literal secrets."""
    try:
        raw = read_yaml(path)
    except YamlFileError as error:
        raise SyncSpecError(str(error)) from None
    return _checked(path, raw)


def load_sync_mapping(path: Path, raw: Any) -> SyncSpec:
    """Validate a sync given as keys read from `path` (a component's attributes), as a sync file is."""
    return _validate(path, _checked(path, raw))


def _checked(path: Path, raw: Any) -> dict:
    """The keys, refused when they are no mapping or hold a literal secret."""
    if not isinstance(raw, dict):
        raise SyncSpecError(f"{path}: a sync file is a YAML mapping of keys (name, data_type, connection, …)")
    if literal := next(_literal_secrets(raw), None):
        # The value itself is never echoed: it is a secret that should not have been in the file.
        raise SyncSpecError(
            f"{path}: {literal}: a secret is never written in a sync file; use {{env: VAR_NAME}}"
        )
    return raw


def _validate(path: Path, raw: dict) -> SyncSpec:
    try:
        return SyncSpec.model_validate({**raw, "source_file": path.resolve()})
    except ValidationError as error:
        raise SyncSpecError(_describe(path, error, raw)) from None


def _literal_secrets(node: Any, where: str = "") -> Iterator[str]:
    """Dotted paths of secret-named keys whose value is written out instead of {env: VAR}."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _literal_secrets(item, f"{where}[{index}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            field = f"{where}.{shown_key(key)}" if where else shown_key(key)
            if _is_secret_key(key) and not _is_env_reference(value):
                yield field
            else:
                yield from _literal_secrets(value, field)


def _is_secret_key(key: Any) -> bool:
    return bool(_SECRET_KEY.search(str(key))) and not _PATH_KEY.search(str(key))


def _is_env_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"env"}


@dataclass(frozen=True)
class InvalidSyncFile:
    """A sync file that is not loaded, with every error it has."""

    path: Path
    name: str
    errors: tuple[str, ...]


@dataclass(frozen=True)
class SyncFolder:
    """The sync files of a folder: the valid syncs, and the files that are not loaded."""

    specs: list[SyncSpec]
    invalid: list[InvalidSyncFile]


def load_sync_folder(directory: Path) -> SyncFolder:
    """Every sync file of a folder: one bad file never keeps the others from loading."""
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    except OSError as error:
        raise SyncSpecError(f"{directory}: cannot read the sync folder: {error.strerror}") from None
    specs: list[SyncSpec] = []
    invalid: list[InvalidSyncFile] = []
    seen: dict[str, Path] = {}
    for path in files:
        name = path.stem
        try:
            raw = _read(path)
            given = raw.get("name")
            # A name that is pasted text is not shown: the file is then known by its file name.
            name = given if isinstance(given, str) and shown_key(given) == given else name
            spec = _validate(path, raw)
        except SyncSpecError as error:
            invalid.append(InvalidSyncFile(path, name, tuple(str(error).splitlines())))
            continue
        if spec.name in seen:
            message = f"{spec.source_file}: name: '{spec.name}' is already used by {seen[spec.name]}"
            invalid.append(InvalidSyncFile(path, spec.name, (message,)))
            continue
        if (other := _other_connection_named(spec, specs)) is not None:
            invalid.append(InvalidSyncFile(path, spec.name, (connection_name_conflict(spec, other),)))
            continue
        seen[spec.name] = spec.source_file
        specs.append(spec)
    return SyncFolder(specs, invalid)


def connection_name_conflict(spec: SyncSpec, other: SyncSpec) -> str:
    """The one line for a connection name already given to a different connection in another file."""
    return (
        f"{spec.source_file}: connection.name: '{spec.connection.name}' already names a different connection "
        f"in {other.source_file}; give the same connection keys in both files, or another name"
    )


def _other_connection_named(spec: SyncSpec, specs: list[SyncSpec]) -> SyncSpec | None:
    """A sync whose different connection has this sync's connection name: one name is one resource."""
    name = spec.connection.name
    config = connection_config(spec.connection)
    return next(
        (
            other
            for other in specs
            if name is not None
            and other.connection.name == name
            and connection_config(other.connection) != config
        ),
        None,
    )


def _describe(path: Path, error: ValidationError, raw: dict) -> str:
    lines = []
    for item in error.errors():
        where = _location(item["loc"], raw)
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: {where}: unknown key; allowed: {_allowed_keys(item['loc'], raw)}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "required"
        elif item["type"] in ("union_tag_invalid", "union_tag_not_found") and item["loc"] == ("connection",):
            message = _connection_type_message(item.get("ctx", {}).get("tag"))
        elif (
            item["type"] in ("union_tag_invalid", "union_tag_not_found") and item["loc"][0] == "destinations"
        ):
            tag = item.get("ctx", {}).get("tag")
            shown = f" '{tag}'" if tag and re.fullmatch(r"[\w.-]{1,40}", tag) else ""
            message = f"type{shown} is not a destination type; available: {', '.join(DESTINATION_TYPES)}"
            message = message if tag else f"type: required; available: {', '.join(DESTINATION_TYPES)}"
        lines.append(f"{path}: {where}: {message}" if where else f"{path}: {message}")
    return "\n".join(lines)


def _connection_type_message(tag: str | None) -> str:
    available = ", ".join(f"'{name}'" for name in warehouse_types())
    if tag is None:
        return f"type: required; available: {available}"
    # A type that is no name at all is not repeated: it may be text pasted in the wrong place.
    shown = f" '{tag}'" if re.fullmatch(r"[\w.-]{1,40}", tag) else ""
    return f"type{shown} is not a connection type; available: {available}"


def _location(loc: tuple, raw: dict) -> str:
    """Dotted field path, without pydantic's union tags."""
    parts: list[str] = []
    node: Any = raw
    previous: Any = None
    for part in loc:
        is_tag = (
            isinstance(node, dict)
            and node.get("type") == part
            and (isinstance(previous, int) or previous == "connection")
        )
        previous = part
        if is_tag:
            continue  # a discriminated union's tag
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if part == "source_file":
            continue
        parts.append(shown_key(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _allowed_keys(loc: tuple, raw: dict) -> str:
    model: type[BaseModel] = SyncSpec
    node: Any = raw
    previous: Any = None
    for part in loc[:-1]:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) else None
            if model is SyncSpec and isinstance(node, dict):
                model = _destination_model(node) if previous == "destinations" else _mapping_model(node)
            continue
        previous = part
        node = node.get(part) if isinstance(node, dict) else None
        if part == "connection":
            model = _connection_model(node)
        elif part == "mapping":
            continue
        elif part in ("sync", "data_model", "destination", "checks"):
            model = {
                "sync": SyncSettings,
                "data_model": DataModelSpec,
                "destination": ProfileStoreDestination,
                "checks": Checks,
            }[part]
    # A key that would shadow a pydantic attribute (`schema`) is a field with that alias; the keys every
    # connection takes (query_timeout) come after the warehouse's own.
    shared = ConnectionSpec.model_fields if issubclass(model, ConnectionSpec) else {}
    names = [name for name in model.model_fields if name != "source_file"]
    return ", ".join(
        model.model_fields[name].alias or name
        for name in [*(n for n in names if n not in shared), *(n for n in names if n in shared)]
    )


def _connection_model(connection: Any) -> type[BaseModel]:
    kind = connection.get("type") if isinstance(connection, dict) else None
    return next((model for model in CONNECTIONS if model.type_name() == kind), BaseModel)


def _destination_model(entry: dict) -> type[BaseModel]:
    return {"mparticle": MParticleDestination, "amplitude": AmplitudeDestination}.get(
        entry.get("type", ""), BaseModel
    )


def _mapping_model(entry: dict) -> type[BaseModel]:
    return {"column": ColumnMapping, "static": StaticMapping, "ignore": IgnoreMapping}.get(
        entry.get("type", ""), ObjectMapping
    )
