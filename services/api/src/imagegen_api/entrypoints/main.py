"""Process entrypoint: ``python -m imagegen_api``."""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap
from ..config import SERVICE, ApiSettings


def main() -> None:
    run_main(SERVICE, ApiSettings, bootstrap)


if __name__ == "__main__":
    main()
