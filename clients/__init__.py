"""Clients of the served model: Python (sync and async), ``s4seg segment``, ``s4seg predict``."""

from .client import AsyncSegmentationClient, ClientError, SegmentationClient, SegmentResult

__all__ = ["AsyncSegmentationClient", "ClientError", "SegmentResult", "SegmentationClient"]
