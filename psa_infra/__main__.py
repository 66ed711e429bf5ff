"""Run psa-infra as ``python -m psa_infra``."""

from psa_infra.cli import main

main()
