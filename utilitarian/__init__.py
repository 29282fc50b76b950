"""utilitarian: Celery-compatible workers, a fail-over beat and meter reading for a meter-data platform."""

__version__ = "0.1.0"
