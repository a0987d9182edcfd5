"""Generated gRPC code (see edgegan/runtime/codegen.py); never edit by hand."""
