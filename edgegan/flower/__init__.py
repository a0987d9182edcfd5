"""Flower integration: a Strategy whose aggregation is Stage I, and ClientApp/ServerApp for the
coalescence pipeline (``flwr run .``, ``flower-superlink`` / ``flower-supernode``)."""
