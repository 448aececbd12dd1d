"""akidb-embed: multi-model text-embedding serving for GPU edge nodes on Kubernetes."""

__version__ = "0.1.0"
