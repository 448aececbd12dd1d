"""akidb-embed operator."""
