"""edgegan.sim: scenario schema, join/leave schedules, the Ray / in-process engine (``pool``, ``host``
and its ``spill`` file, ``link``, ``ray_connect``), one module per pipeline (``coalescence``,
``tdgan``, ``grid``) returning a typed result, and run reports."""
