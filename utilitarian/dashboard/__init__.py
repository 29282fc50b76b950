"""`utilitarian dashboard`: a read-only status page of the fleet (hosts and pools, queues, the beat,
and what plugins contribute, e.g. AMR rounds), served by the standard library's HTTP server."""
