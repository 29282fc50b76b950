"""Fleet control over the broker: `status --all`, `utilitarian control` (protocol, agent, client)."""
