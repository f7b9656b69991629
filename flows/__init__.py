"""Prefect flows over ``pipeline.run``'s stages: orchestration only, no image maths.

- :mod:`flows.reel`: the ``colorize-reel`` flow (prepare → shots wave by wave → assemble) and
  :func:`flows.reel.run_flow`, what ``postprod run`` calls;
- :mod:`flows.shot`: the cached, GPU-slotted ``colorize-shot`` task and the ``colorize-shot``
  flow a farm runs one per shot;
- :mod:`flows.ingest`: the scheduled ``ingest`` flow submitting one run per new reel;
- :mod:`flows.artifacts`: the run's Markdown report, shots table and progress in the Prefect UI;
- :mod:`flows.settings`: Prefect defaults (applied here, before Prefect is first imported).
"""

from flows.settings import apply_server_defaults

apply_server_defaults()
