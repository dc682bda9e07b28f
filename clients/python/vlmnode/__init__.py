"""VLM Node client: generated messages and stubs live in `vlmnode.v1`."""
