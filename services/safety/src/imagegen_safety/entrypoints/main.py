"""Process entrypoint: ``python -m imagegen_safety``."""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap
from ..config import SERVICE, SafetySettings


def main() -> None:
    run_main(SERVICE, SafetySettings, bootstrap)


if __name__ == "__main__":
    main()
