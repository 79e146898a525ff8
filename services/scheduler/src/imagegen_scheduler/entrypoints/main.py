"""Process entrypoint: ``python -m imagegen_scheduler``."""

from imagegen_runtime.standard import run_main

from ..bootstrap import bootstrap
from ..config import SERVICE, SchedulerSettings


def main() -> None:
    run_main(SERVICE, SchedulerSettings, bootstrap)


if __name__ == "__main__":
    main()
