"""Process entrypoint of the job projector on its own: ``python -m imagegen_api.projector``.

It reads the API's settings (``IMAGEGEN_API_*``; give it its own ``IMAGEGEN_API_HTTP_PORT``) and
runs only the projector; the API beside it runs with ``IMAGEGEN_API_RUN_PROJECTOR=false``
(ADR 0641).
"""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap_projector
from ..config import PROJECTOR, ApiSettings


def main() -> None:
    run_main(PROJECTOR, ApiSettings, bootstrap_projector)


if __name__ == "__main__":
    main()
