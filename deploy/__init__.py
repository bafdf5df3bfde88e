"""Cross-silo deployment of fedtune on Flower's deployment engine (docs/deployment.md).

``pki`` makes the CA, the SuperLink's certificate and the SuperNodes' keys; ``superlink`` and
``supernode`` check their inputs and start Flower's processes; ``federation`` writes the
connection for ``flwr run`` and registers keys; ``loopback`` runs it all on one machine.
"""
