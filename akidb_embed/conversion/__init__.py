"""akidb-embed conversion."""
