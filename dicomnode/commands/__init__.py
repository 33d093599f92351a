"""CLI command implementations, one module per command group; assembled in dicomnode.cli."""
