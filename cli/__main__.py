"""``python -m cli``: the same as the ``postprod`` command."""

from cli.main import main

main()
