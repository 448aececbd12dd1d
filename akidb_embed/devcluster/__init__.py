"""akidb-embed devcluster."""
