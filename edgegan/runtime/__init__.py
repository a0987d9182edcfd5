"""Runtime: CloudServer / EdgeNode roles (no transport inside) and their transports: inproc, grpc
(the simulator adds a Ray link in :mod:`edgegan.sim.engine`)."""
