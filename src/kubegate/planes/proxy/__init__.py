"""planes/proxy."""
