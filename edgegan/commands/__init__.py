"""One module per ``edgegan`` subcommand, each with ``register(subparsers)``."""
