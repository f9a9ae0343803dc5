"""The local MLflow stack: ``python -m stack start|stop|status`` (``make stack``)."""
