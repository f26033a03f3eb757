"""luna's version (one place; ``luna.__version__`` re-exports it)."""
__version__ = "0.1.0"
