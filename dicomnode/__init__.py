"""dicomnode package."""
