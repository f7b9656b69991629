"""The ``postprod`` command: click commands over ``pipeline`` (the domain) and ``flows`` (Prefect).

- :mod:`cli.main`: the command group, ``--debug``, and how errors reach the user (one line,
  exit 2 for what the user can fix, tracebacks only with ``--debug``);
- :mod:`cli.media`: ``probe``, ``transcode``, ``frame``, ``shots``;
- :mod:`cli.stills`: ``colorize-image``, ``train``;
- :mod:`cli.job`: ``plan``, ``run``.
"""
