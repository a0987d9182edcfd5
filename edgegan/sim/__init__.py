"""edgegan.sim: scenario schema, join/leave schedules, the Ray / in-process engine, one module per
pipeline (``coalescence``, ``tdgan``, ``grid``) returning a typed result, and run reports."""
