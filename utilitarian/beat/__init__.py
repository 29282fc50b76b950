"""The beat: the singleton scheduler (one leader by a RabbitMQ lock, hot standbys) that fires
cron entries exactly once per wall-clock slot. See docs/beat.md."""
