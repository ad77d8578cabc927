"""The console's pages and actions, under `/console`, gathered from one module per group.

Thin on purpose: each page reads through gateway.console.queries (the JSON API's own
functions), shapes with gateway.console.views and renders a template (gateway.console.pages);
each action calls the function the API route calls, which records it in the audit log as
for the API (actor "console:admin" or "console:key:<id>"), and forgets cached lookups
(`services.changed()`).

Every POST needs the session's CSRF token and re-checks who may act (gateway.console.access):
a tenant acts on its own tenant only (anything else is a 404, as in the API), operators on
any; only operators create tenants and create, rotate or revoke keys (the API's rule: only
the admin key manages keys, so a key never mints another that outlives it). Errors render
as HTML pages, never as the API's JSON.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import adapter_pages, job_pages, signal_pages, signin, tenant_pages

router = APIRouter()
for _pages in (signin, tenant_pages, adapter_pages, job_pages, signal_pages):
    router.include_router(_pages.router)
