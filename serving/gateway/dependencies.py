"""What routes get injected: settings, the Triton client, the catalog, the API key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from ..settings import ServeSettings
from .catalog import Catalog
from .triton_client import TritonEnsemble

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


class Unauthorized(Exception):
    pass


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_triton(request: Request) -> TritonEnsemble:
    return request.app.state.triton


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def require_api_key(request: Request) -> None:
    """With S4SEG_API_KEY set, X-API-Key must match it (compared in constant time)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = await api_key_header(request)
    if not given or not hmac.compare_digest(
        given.encode("utf-8"), expected.get_secret_value().encode("utf-8")
    ):
        raise Unauthorized


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
TritonDep = Annotated[TritonEnsemble, Depends(get_triton)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
