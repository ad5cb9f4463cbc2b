"""Bringing other libraries' checkpoints in: written with jaxckpt's own save path."""
