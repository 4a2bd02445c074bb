"""Post-training methods; importing this package registers the built-in ones."""
