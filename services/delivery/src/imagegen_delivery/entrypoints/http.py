"""The delivery service's HTTP app: signed downloads under /files (health routes are added by the
runtime).

``GET /files/{job_id}/{index}.png?exp=&sig=`` answers, in this order: 404 for a path that is not a
job id and a canonical ``<index>.png`` (nothing outside the store is ever named), 403 for a missing
or bad signature, 410 for an expired link, 404 for a link to a file not (or no longer) stored,
else 200 with the PNG.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, HTTPException, Response

from imagegen_runtime.tracing import FASTAPI_TELEMETRY

from ..adapters.store import BlobStore
from ..config import DeliverySettings
from ..domain.links import EXPIRES, FILE_NAME, JOB_ID, LinkCheck, file_path, verify
from ..service_layer.handlers import Clock


def make_http_app(
    store: BlobStore, settings: DeliverySettings, clock: Clock = time.time
) -> FastAPI:
    app = FastAPI(
        title="imagegen-delivery",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    key = settings.signing_key.get_secret_value().encode()

    @app.get("/files/{job_id}/{file_name}")
    async def get_file(job_id: str, file_name: str, exp: str = "", sig: str = "") -> Response:
        name = FILE_NAME.fullmatch(file_name)
        if not JOB_ID.fullmatch(job_id) or name is None:
            raise HTTPException(404, "not found")
        index = int(name.group(1))
        if not EXPIRES.fullmatch(exp):
            raise HTTPException(403, "missing or invalid link signature")
        now = int(clock())
        match verify(file_path(job_id, index), int(exp), sig, key, now):
            case LinkCheck.BAD_SIGNATURE:
                raise HTTPException(403, "missing or invalid link signature")
            case LinkCheck.EXPIRED:
                raise HTTPException(410, "link expired")
        data = await asyncio.to_thread(store.read, job_id, index)
        if data is None:
            raise HTTPException(404, "not found")
        return Response(
            data,
            media_type="image/png",
            headers={
                "Cache-Control": f"private, max-age={int(exp) - now}",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return app
