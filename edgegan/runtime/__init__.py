"""Runtime: the cloud roles (:class:`~edgegan.runtime.roles.TDGANServer`,
:class:`~edgegan.runtime.roles.CoalesceServer`) and the edge role (``EdgeNode``), with no transport
inside, and their transports: inproc, grpc (the simulator adds its pool link in
:mod:`edgegan.sim.engine`)."""
