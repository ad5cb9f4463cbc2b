"""Leaving jaxckpt's format: export to (and import from) other libraries' files."""
