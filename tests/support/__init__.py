"""Test helpers: a real RabbitMQ (shared node, private node or container), processes, sinks."""
