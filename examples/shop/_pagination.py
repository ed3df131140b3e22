"""Opaque cursors for keyset pagination (``?limit=&cursor=``) shared by both services."""

from __future__ import annotations

import base64
import binascii


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The last id seen; raises ``ValueError`` for a cursor this service did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a cursor issued by this service") from exc
    prefix, _, value = raw.partition(":")
    if prefix != "id" or not value.isdigit():
        raise ValueError("not a cursor issued by this service")
    return int(value)
