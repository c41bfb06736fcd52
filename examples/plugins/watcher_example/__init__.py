"""An example third-party check package for watcher."""
