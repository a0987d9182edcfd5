"""edgegan.sim: scenario schema, join/leave schedules, the Ray / in-process engine, run reports."""
