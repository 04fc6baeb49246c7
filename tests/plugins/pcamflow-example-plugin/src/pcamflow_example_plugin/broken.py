"""A plugin module that fails to import, for testing how the registry reports it."""

raise ImportError("this example plugin is broken on purpose")
