"""/readyz of the gpu-worker says "not ready" while its blob store cannot be written (issue 10).

Before, the worker reported ready with an unwritable blob folder, took jobs and could store
none of their images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from imagegen_gpu_worker.bootstrap import bootstrap
from imagegen_gpu_worker.config import GpuWorkerSettings
from imagegen_runtime.publishing import InMemoryPublisher

pytestmark = pytest.mark.unit


def test_readyz_is_not_ready_while_the_blob_folder_cannot_be_written(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.write_text("a file where the blob folder's parent should be")  # stops root too
    settings = GpuWorkerSettings(
        kafka_bootstrap="127.0.0.1:1",  # no broker: the Kafka checks fail too, not under test
        blob_dir=storage / "blobs",
        models_dir=tmp_path / "models",
    )
    app = bootstrap(settings, publisher=InMemoryPublisher())  # type: ignore[arg-type]
    client = TestClient(app.http)

    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["blob_store_writable"] is False

    storage.unlink()  # the folder can be made again
    answer = client.get("/readyz")
    assert answer.json()["checks"]["blob_store_writable"] is True
    assert not any(p.name.startswith(".writable") for p in (storage / "blobs").iterdir())
