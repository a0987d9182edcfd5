"""TDGAN (seed 003): central conditional generator, temporary local discriminators."""
