"""planes/render."""
