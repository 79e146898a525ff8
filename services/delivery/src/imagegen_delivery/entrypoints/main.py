"""Process entrypoint: ``python -m imagegen_delivery``."""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap
from ..config import SERVICE, DeliverySettings


def main() -> None:
    run_main(SERVICE, DeliverySettings, bootstrap)


if __name__ == "__main__":
    main()
