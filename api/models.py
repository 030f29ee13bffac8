"""Request models: the shapes the API accepts (responses are listmill.records)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from listmill.consent import MemberStatus, anonymize_ip
from listmill.pagination import DEFAULT_LIMIT, MAX_LIMIT
from listmill.records import (
    BigId,
    ContactStatus,
    JobKind,
    JobStatus,
    ListStatus,
    OptInProcess,
    SequenceStatus,
    TriggerConfig,
)
from listmill.validation import CustomData, Email, ShortText, Text

Name = Annotated[ShortText, Field(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PageQuery(Strict):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    cursor: Text | None = None


class ContactQuery(PageQuery):
    email: Annotated[Text, Field(max_length=254)] | None = None
    status: ContactStatus | None = None


class ContactFields(Strict):
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    country: ShortText | None = None
    time_zone: ShortText | None = None
    data: CustomData | None = None
    status: ContactStatus | None = None


class ContactUpsert(ContactFields):
    """POST /contacts: upsert by email."""

    email: Email


class ContactPatch(ContactFields):
    """PATCH /contacts/{id}: only the fields sent change; ``data`` merges."""

    email: Email | None = None


class ListQuery(PageQuery):
    status: ListStatus | None = None


class ListCreate(Strict):
    name: Name
    description: Annotated[Text, Field(max_length=2000)] | None = None
    opt_in_process: OptInProcess = OptInProcess.SINGLE


class ListPatch(Strict):
    name: Name | None = None
    description: Annotated[Text, Field(max_length=2000)] | None = None
    opt_in_process: OptInProcess | None = None
    status: ListStatus | None = None


class SequenceCreate(Strict):
    name: Name
    status: SequenceStatus = SequenceStatus.ACTIVE
    trigger_config: TriggerConfig


class SequencePatch(Strict):
    name: Name | None = None
    status: SequenceStatus | None = None
    trigger_config: TriggerConfig | None = None


BulkEmail = Annotated[Text, Field(max_length=320)]


class BulkContactsRequest(Strict):
    """bulk-subscribe, bulk-unsubscribe, bulk-delete: contacts by id or by email."""

    contact_ids: Annotated[list[BigId], Field(min_length=1, max_length=1000)] | None = None
    emails: Annotated[list[BulkEmail], Field(min_length=1, max_length=1000)] | None = None
    list_id: BigId | None = None
    trigger_sequences: bool = True

    @model_validator(mode="after")
    def _one_identifier(self) -> BulkContactsRequest:
        if (self.contact_ids is None) == (self.emails is None):
            raise ValueError("send exactly one of contact_ids or emails")
        return self


class BulkContact(ContactFields):
    """A contact in a bulk upsert; an invalid email becomes an error row of the job."""

    email: BulkEmail


class BulkUpsertRequest(Strict):
    contacts: Annotated[list[BulkContact], Field(min_length=1, max_length=10_000)]


class JobQuery(PageQuery):
    status: JobStatus | None = None
    kind: JobKind | None = None


MemberSource = Literal["manual", "import", "api", "form", "migration"]


class MemberContact(Strict):
    """A contact named by email in a member addition: created if new, blanks filled."""

    email: BulkEmail
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    country: ShortText | None = None
    time_zone: ShortText | None = None
    data: CustomData | None = None


class AddMembersRequest(Strict):
    contact_ids: list[BigId] = Field(default_factory=list, max_length=1000)
    contacts: list[MemberContact] = Field(default_factory=list, max_length=1000)
    source: MemberSource = "api"
    status: MemberStatus | None = None
    trigger_sequences: bool = True

    @model_validator(mode="after")
    def _entries(self) -> AddMembersRequest:
        if not 1 <= len(self.contact_ids) + len(self.contacts) <= 1000:
            raise ValueError("send 1 to 1,000 entries in contact_ids and contacts together")
        return self


class RemoveMembersRequest(Strict):
    contact_ids: Annotated[list[BigId], Field(min_length=1, max_length=1000)]


class RemoveMembersQuery(Strict):
    mode: Literal["delete", "unsubscribe"] = "delete"


class MemberQuery(PageQuery):
    status: MemberStatus | None = None


class MemberSearch(Strict):
    email: Email


class MembershipContact(MemberContact):
    """A contact named by email in a single-membership call: the email must be valid."""

    email: Email


class MembershipTarget(Strict):
    """Which membership: ``list_id`` and exactly one of ``contact_id`` or ``contact``."""

    list_id: BigId
    contact_id: BigId | None = None
    contact: MembershipContact | None = None

    @model_validator(mode="after")
    def _one_contact(self) -> MembershipTarget:
        if (self.contact_id is None) == (self.contact is None):
            raise ValueError("send exactly one of contact_id or contact")
        return self


class ConsentFields(Strict):
    """Consent evidence; the IP address is anonymised before it is stored."""

    consent_source: ShortText | None = None
    consent_text_version: ShortText | None = None
    consent_ip: Annotated[str, Field(max_length=64)] | None = None

    @field_validator("consent_ip")
    @classmethod
    def _anonymise(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return anonymize_ip(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None


class MembershipPut(MembershipTarget, ConsentFields):
    status: MemberStatus | None = None
    source: MemberSource = "api"


class ImportOptions(ConsentFields):
    """Options of POST /contacts/import, as query parameters or multipart form fields."""

    list_id: BigId | None = None
    mode: Literal["upsert", "fill_blanks", "mirror"] = "upsert"
    status: MemberStatus | None = None
    source: MemberSource = "import"
    resubscribe: bool = False
    dry_run: bool = False
    trigger_sequences: bool = True

    @model_validator(mode="after")
    def _mirror_needs_list(self) -> ImportOptions:
        if self.mode == "mirror" and self.list_id is None:
            raise ValueError("mode=mirror needs a list_id: the list to make equal to the file")
        return self
