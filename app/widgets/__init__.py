"""Views of the app: each widget only displays what the workers computed and emits user intent."""
