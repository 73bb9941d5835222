"""What routes get injected: settings, the Triton client, the catalog, the API key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from ..settings import ServeSettings
from .budget import PixelBudget
from .catalog import Catalog
from .limits import Deadline
from .security import key_matches
from .triton_client import TritonEnsemble
from .work import RequestWork

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


class Unauthorized(Exception):
    pass


# ``async def`` throughout: FastAPI runs plain ``def`` dependencies in the thread pool, where
# /healthz and /readyz would queue behind busy decodes.
async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


async def get_triton(request: Request) -> TritonEnsemble:
    return request.app.state.triton


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_budget(request: Request) -> PixelBudget:
    return request.app.state.budget


async def get_deadline(request: Request) -> Deadline:
    """Set by ``Admission`` for segment requests; a fresh one elsewhere (tests, other routes)."""
    deadline = getattr(request.state, "deadline", None)
    return deadline or Deadline(request.app.state.settings.request_timeout)


async def get_work(request: Request) -> RequestWork:
    """Set by ``Admission`` for segment requests; a fresh one elsewhere (tests, other routes)."""
    work = getattr(request.state, "work", None)
    return work or RequestWork(request.app.state.workers)


async def require_api_key(request: Request) -> None:
    """With S4SEG_API_KEY set, X-API-Key must match it (compared in constant time)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if not key_matches(await api_key_header(request), expected.get_secret_value()):
        raise Unauthorized


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
TritonDep = Annotated[TritonEnsemble, Depends(get_triton)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
BudgetDep = Annotated[PixelBudget, Depends(get_budget)]
DeadlineDep = Annotated[Deadline, Depends(get_deadline)]
WorkDep = Annotated[RequestWork, Depends(get_work)]
