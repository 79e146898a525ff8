"""Process entrypoint: ``python -m imagegen_gpu_worker``."""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap
from ..config import SERVICE, GpuWorkerSettings


def main() -> None:
    run_main(SERVICE, GpuWorkerSettings, bootstrap)


if __name__ == "__main__":
    main()
