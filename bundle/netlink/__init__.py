"""Small, fast netlink decoders for tables too large for pyroute2's per-attribute decoding."""
