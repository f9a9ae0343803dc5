"""Registry-facing code: how a model is packaged, registered, promoted and resolved."""
