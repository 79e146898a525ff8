from .entrypoints.main import main

main()
