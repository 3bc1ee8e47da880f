"""``python -m llenergymeasure`` runs the ``llem`` CLI."""

from llenergymeasure.cli.app import main

main()
