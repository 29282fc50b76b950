"""utilitarian: Celery-compatible workers, a fail-over beat and meter reading for a meter-data platform."""

__version__ = "0.1.0"


def send_task(name, args=(), kwargs=None, **options):
    """Publish one task with a confirm; see utilitarian.app.App.send_task for the options."""
    from utilitarian.app import send_task as _send

    return _send(name, args, kwargs, **options)
