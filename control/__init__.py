"""radcore control plane: the operator's "Calling Cards" section as plain domain modules plus a gRPC API.

The domain modules (series, cards, rates, catalog, fees, export, sessions, audit, auth) take a Store
and a Principal and run their own short LMDB transactions, so the gRPC servicers, the CLI and the fee
scheduler all share one implementation. `control.service` only translates messages and errors;
`control.grpc_server` wires it to a server with authorization, health and reflection. The control
plane reads and writes radcore's records through radcore.store/rating/generation; radcore never
imports control.
"""
