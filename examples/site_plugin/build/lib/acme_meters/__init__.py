"""ACME line-protocol meters: an example of a site's utilitarian plugin."""
