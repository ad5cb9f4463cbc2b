"""``jaxckpt demo``: a training run killed mid-way and resumed (``orchestrate``), the child
process that trains (``child``, run as ``python -m jaxckpt._demo.child``), and the report
of the two runs (``report``).

May import: the public package, ``_api`` and ``_report``; nothing imports it but ``cli``
and tests.
"""

# What cli and tests call as ``jaxckpt._demo.<name>``.
from .orchestrate import (MARKER, DemoError, DemoResult, Run,  # noqa: F401
                          check_requirements, main, prepare_directory, run)
from .report import loss_curve  # noqa: F401
