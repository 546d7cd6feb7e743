"""``python -m wfe`` is the ``wfe`` command."""

from wfe.cli import main

main()
