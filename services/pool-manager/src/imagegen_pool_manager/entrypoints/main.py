"""Process entrypoint: ``python -m imagegen_pool_manager``."""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap
from ..config import SERVICE, PoolManagerSettings


def main() -> None:
    run_main(SERVICE, PoolManagerSettings, bootstrap)


if __name__ == "__main__":
    main()
