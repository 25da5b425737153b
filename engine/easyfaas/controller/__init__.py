"""The controller: invoke API, scheduling, durable async queue, metrics, management API."""
