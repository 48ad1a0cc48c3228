"""``python -m phasegrad_hw.cli`` runs the command line."""

from phasegrad_hw.cli import main

main()
