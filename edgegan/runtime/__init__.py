"""Runtime: the cloud roles (:class:`~edgegan.runtime.roles.TDGANServer`,
:class:`~edgegan.runtime.coalesce_server.CoalesceServer`) and the edge role
(:class:`~edgegan.runtime.edge_node.EdgeNode`), with no transport inside, and their transports:
inproc, grpc (the simulator adds its pool link in :mod:`edgegan.sim.link`)."""
