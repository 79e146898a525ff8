"""/v1/files: control image uploads, in the shape of OpenAI's Files API (ADR 0706).

``POST /v1/files`` takes a ``multipart/form-data`` body with ``file`` (a PNG, JPEG or WebP
image, at most the server's cap, 4 MiB by default, and 4096 px a side) and ``purpose``
(``control_image``), stores it in the files folder the workers read, and answers
``{"id": "file-...", "object": "file", "bytes": N, "created_at": ..., "filename": ...,
"purpose": "control_image"}``. A generation names it in ``controlnets[].image_uri``. Every
problem is a 422 naming the field (``file``, ``purpose``); nothing is stored then.

:func:`control_images` resolves a generation's ``controlnets[].image_uri`` the same way: a
``data:`` URI is decoded and checked as an upload is (it is stored only once the whole request
is valid), a file id must name a stored file.

The multipart body is parsed with the standard library's email parser (python-multipart, which
FastAPI's form support needs, is not a dependency).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ...adapters.files import image_problem
from ...domain.files import FILE_ID, PURPOSE, decode_data_uri, file_id
from ...domain.validation import Problem
from .bodies import ControlNetIn, Unprocessable
from .deps import CallerDep, Deps, DepsDep

router = APIRouter(prefix="/v1/files", tags=["files"])
MULTIPART_OVERHEAD = 64 * 1024  # headers, boundaries and the purpose field
MAX_REF_CHARS = 2048  # an image_uri that is not a data: URI (events carry at most this)


def _refuse(field_name: str, msg: str) -> HTTPException:
    return Unprocessable([((field_name,), msg)]).as_http()


async def _read_capped(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise _refuse("file", f"the upload is larger than {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _refuse("file", f"the upload is larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _form(content_type: str, body: bytes) -> dict[str, EmailMessage]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _refuse("file", "send multipart/form-data with a 'file' and a 'purpose' field")
    fields: dict[str, EmailMessage] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and isinstance(part, EmailMessage):
            fields.setdefault(name, part)
    return fields


@router.post("", status_code=200)
async def upload(request: Request, who: CallerDep, deps: DepsDep) -> dict[str, Any]:
    """Store a control image; answer its file object."""
    if deps.files is None:
        raise HTTPException(503, "this server stores no files (no files folder configured)")
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise _refuse("file", "send multipart/form-data with a 'file' and a 'purpose' field")
    cap = deps.max_control_image_bytes
    fields = _form(content_type, await _read_capped(request, cap + MULTIPART_OVERHEAD))
    purpose_part = fields.get("purpose")
    purpose = None if purpose_part is None else purpose_part.get_content().strip()
    problems: list[Problem] = []
    if purpose != PURPOSE:
        problems.append((("purpose",), f"must be {PURPOSE!r}, got {purpose!r}"))
    file_part = fields.get("file")
    data = None if file_part is None else file_part.get_payload(decode=True)
    if not isinstance(data, bytes) or not data:
        problems.append((("file",), "missing: send the image as the 'file' field"))
    elif len(data) > cap:
        problems.append((("file",), f"the image is larger than {cap} bytes (the server's cap)"))
    elif (problem := image_problem(data)) is not None:
        problems.append((("file",), problem))
    if problems:
        raise Unprocessable(problems).as_http()
    assert isinstance(data, bytes) and file_part is not None
    name = await _store(deps, data)
    filename = file_part.get_filename() or name
    return {
        "id": name,
        "object": "file",
        "bytes": len(data),
        "created_at": int(deps.clock().timestamp()),
        "filename": filename[:255],
        "purpose": PURPOSE,
    }


async def _store(deps: Deps, data: bytes) -> str:
    assert deps.files is not None
    try:
        return await asyncio.to_thread(deps.files.put, data)
    except OSError as exc:
        raise HTTPException(
            503, f"the files folder cannot store the image now: {exc}", headers={"Retry-After": "2"}
        ) from exc


@dataclass
class ControlImages:
    """A generation's control images: the reference each ``controlnets[i]`` gets (a file id),
    the decoded ``data:`` images still to store, and every problem (field, reason)."""

    refs: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    async def store(self, deps: Deps) -> None:
        """Store the decoded ``data:`` images (after the whole request was found valid)."""
        for data in self.uploads.values():
            await _store(deps, data)


async def control_images(controlnets: list[ControlNetIn], deps: Deps) -> ControlImages:
    out = ControlImages()
    cap = deps.max_control_image_bytes
    for i, c in enumerate(controlnets):
        loc = ("controlnets", i, "image_uri")
        uri = c.image_uri
        if deps.files is None:
            out.problems.append((loc, "this server takes no control images (no files folder)"))
            out.refs.append(uri[:MAX_REF_CHARS])
            continue
        if uri.startswith("data:"):
            data, problem = decode_data_uri(uri, cap)
            if data is not None:
                problem = await asyncio.to_thread(image_problem, data)
            if problem is not None or data is None:
                out.problems.append((loc, problem or "undecodable"))
                out.refs.append("file-" + "0" * 32)
                continue
            name = file_id(data)
            out.uploads[name] = data
            out.refs.append(name)
        elif FILE_ID.fullmatch(uri):
            if not await asyncio.to_thread(deps.files.exists, uri):
                out.problems.append((loc, f"no file {uri!r}: upload it with POST /v1/files"))
            out.refs.append(uri)
        else:
            out.problems.append(
                (
                    loc,
                    "must be a data: URI (data:image/png;base64,...) or a file id from "
                    "POST /v1/files",
                )
            )
            out.refs.append(uri[:MAX_REF_CHARS])
    return out
