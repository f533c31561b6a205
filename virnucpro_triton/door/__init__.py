"""The front door: the proxy in front of every tritonserver of this project.

- app.py: the door itself (`virnucpro-triton-door`): tritonserver on private Unix sockets, the
  ports served by the door;
- limits.py: its limits on request size, connections, time and memory;
- access.py: access tokens; tls.py: TLS; settings.py: their options;
- sockets.py: the private directory of tritonserver's sockets.
"""
