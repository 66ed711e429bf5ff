"""Run psa-infra from a checkout: ``python cli.py --help``."""

from psa_infra.cli import main

if __name__ == "__main__":
    main()
