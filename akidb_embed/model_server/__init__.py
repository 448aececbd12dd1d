"""akidb-embed model_server."""
