"""akidb-embed gateway."""
