"""Every route of the web process, in one place."""

from __future__ import annotations

from aiohttp import web

from api.handlers import (
    bulk,
    contacts,
    health,
    imports,
    jobs,
    lists,
    members,
    ops,
    public,
    sequences,
)
from api.metrics import metrics
from api.openapi import openapi_json

API = "/api/v1"


def setup_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
            web.get("/metrics", metrics),
            web.get(f"{API}/openapi.json", openapi_json),
            web.get("/unsubscribe/{token}", public.unsubscribe_page),
            web.post("/unsubscribe/{token}", public.unsubscribe),
            web.get("/confirm/{token}", public.confirm),
            web.get("/ops", ops.dashboard),
            web.get("/ops/{name}", ops.dashboard_asset),
            # contacts
            web.get(f"{API}/contacts", contacts.list_contacts),
            web.post(f"{API}/contacts/bulk-upsert", bulk.bulk_upsert),
            web.post(f"{API}/contacts/import", imports.import_contacts),
            web.post(
                f"{API}/contacts/{{operation:bulk-(?:subscribe|unsubscribe|delete)}}",
                bulk.bulk_contacts,
            ),
            web.get(f"{API}/contacts/import/{{id}}", jobs.get_job),
            web.get(f"{API}/contacts/bulk/{{id}}", jobs.get_job),
            web.post(f"{API}/contacts", contacts.upsert_contact),
            web.get(f"{API}/contacts/{{id}}", contacts.get_contact),
            web.patch(f"{API}/contacts/{{id}}", contacts.patch_contact),
            web.delete(f"{API}/contacts/{{id}}", contacts.delete_contact),
            # lists
            web.get(f"{API}/lists", lists.list_lists),
            web.post(f"{API}/lists", lists.create_list),
            web.get(f"{API}/lists/{{id}}", lists.get_list),
            web.patch(f"{API}/lists/{{id}}", lists.patch_list),
            web.delete(f"{API}/lists/{{id}}", lists.delete_list),
            # members
            web.get(f"{API}/lists/{{id}}/members", members.list_members),
            web.post(f"{API}/lists/{{id}}/members", members.add_members),
            web.delete(f"{API}/lists/{{id}}/members", members.remove_members),
            web.post(f"{API}/lists/{{id}}/members/search", members.search_members),
            web.get(f"{API}/lists/{{id}}/members/{{contact_id}}", members.get_member),
            web.put(f"{API}/memberships", members.put_membership),
            web.delete(f"{API}/memberships", members.delete_membership),
            # sequences
            web.get(f"{API}/sequences", sequences.list_sequences),
            web.post(f"{API}/sequences", sequences.create_sequence),
            web.get(f"{API}/sequences/{{id}}", sequences.get_sequence),
            web.patch(f"{API}/sequences/{{id}}", sequences.patch_sequence),
            web.delete(f"{API}/sequences/{{id}}", sequences.delete_sequence),
            web.get(f"{API}/sequences/{{id}}/enrollments", sequences.list_enrollments),
            # operations
            web.get(f"{API}/ops/queues", ops.queues),
            # jobs
            web.get(f"{API}/jobs", jobs.list_jobs),
            web.get(f"{API}/jobs/{{id}}", jobs.get_job),
            web.get(f"{API}/jobs/{{id}}/errors", jobs.list_errors),
            web.get(f"{API}/jobs/{{id}}/events", jobs.job_events),
            web.post(f"{API}/jobs/{{id}}/cancel", jobs.cancel_job),
        ]
    )
