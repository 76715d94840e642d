"""arq worker processes of calltags."""
