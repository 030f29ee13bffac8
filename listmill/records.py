"""Typed records of each aggregate, as queries return them and the API shows them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

BigId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class ContactStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class ListStatus(StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"


class OptInProcess(StrEnum):
    SINGLE = "single"
    DOUBLE = "double"


class SequenceStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class JobKind(StrEnum):
    IMPORT = "import"
    BULK_UPSERT = "bulk_upsert"
    BULK_SUBSCRIBE = "bulk_subscribe"
    BULK_UNSUBSCRIBE = "bulk_unsubscribe"
    BULK_DELETE = "bulk_delete"
    ADD_MEMBERS = "add_members"
    REMOVE_MEMBERS = "remove_members"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Record(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, row: Any) -> Self:
        return cls.model_validate(dict(row))


class Contact(Record):
    id: int
    email: str
    first_name: str | None
    last_name: str | None
    country: str | None
    time_zone: str | None
    data: dict[str, Any]
    status: ContactStatus
    created_at: datetime
    updated_at: datetime


class MailingList(Record):
    id: int
    name: str
    description: str | None
    opt_in_process: OptInProcess
    status: ListStatus
    member_count: int
    created_at: datetime
    updated_at: datetime


class ListAddedTrigger(BaseModel):
    """Enroll a contact when it becomes a subscribed or confirmed member of ``list_id``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["list_added"]
    list_id: BigId


TriggerConfig = Annotated[ListAddedTrigger, Field(discriminator="type")]


class Sequence(Record):
    id: int
    name: str
    status: SequenceStatus
    trigger_config: TriggerConfig
    created_at: datetime
    updated_at: datetime


class Enrollment(Record):
    sequence_id: int
    contact_id: int
    status: str
    enrolled_at: datetime
    job_id: UUID | None


class ApiKey(Record):
    id: int
    project_id: int
    kind: Literal["secret", "restricted"]
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class JobRow(Record):
    """A job as stored: what the API shows is derived from it (see ``Job``)."""

    id: UUID
    project_id: int
    kind: JobKind
    lane: str
    status: JobStatus
    params: dict[str, Any]
    total: int | None
    processed: int
    counts: dict[str, int]
    checkpoint: int
    attempts: int
    max_attempts: int
    cancel_requested: bool
    lease_token: UUID | None
    errors_count: int
    errors_truncated: bool
    error: str | None
    rows_per_second: float | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker_id: str | None


class Progress(BaseModel):
    total: int | None
    processed: int
    percent: float | None
    rows_per_second: float | None
    eta_seconds: float | None

    @classmethod
    def of(cls, total: int | None, processed: int, rate: float | None, finished: bool) -> Progress:
        """Percent and ETA derived from the committed counters."""
        percent = round(100.0 * processed / total, 1) if total else (100.0 if total == 0 else None)
        eta = None
        if total is not None and rate and not finished:
            eta = round(max(total - processed, 0) / rate, 1)
        rounded = round(rate, 1) if rate else None
        return cls(
            total=total, processed=processed, percent=percent, rows_per_second=rounded,
            eta_seconds=eta,
        )  # fmt: skip


class Job(BaseModel):
    """A job as the API shows it."""

    id: UUID
    kind: JobKind
    status: JobStatus
    lane: str
    params: dict[str, Any]
    progress: Progress
    counts: dict[str, int]
    errors_count: int
    errors_truncated: bool
    attempts: int
    cancel_requested: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: JobRow) -> Job:
        return cls(
            **row.model_dump(
                include={
                    "id",
                    "kind",
                    "status",
                    "lane",
                    "params",
                    "counts",
                    "errors_count",
                    "errors_truncated",
                    "attempts",
                    "cancel_requested",
                    "error",
                    "created_at",
                    "started_at",
                    "updated_at",
                    "finished_at",
                }
            ),
            progress=Progress.of(
                row.total, row.processed, row.rows_per_second, row.status.finished
            ),
        )


class ContactSummary(BaseModel):
    id: int
    email: str
    first_name: str | None
    last_name: str | None
    status: ContactStatus


class Membership(Record):
    list_id: int
    contact_id: int
    status: str
    source: str
    subscribed_at: datetime | None
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    consent_source: str | None
    consent_text_version: str | None
    consent_ip: str | None
    created_at: datetime
    updated_at: datetime
    contact: ContactSummary
    unsubscribe_url: str | None = None
