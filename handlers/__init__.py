"""Built-in handlers and the loader of users' model.py handlers."""
