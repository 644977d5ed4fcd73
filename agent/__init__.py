"""agent/: the brain. The policy service (a Ray actor answering over ZeroMQ), its wire protocol, and its
Python client. Protocol specification: docs/protocol.md ("Policy service"); its messages are the typed
structs of ``agent.messages``.

    from tickcall.agent.client import PolicyClient                 # DEALER client: timeouts, reconnect, re-register
    from tickcall.agent.messages import CallReply, ErrorReply      # what a decide is answered with (typed)
    from tickcall.agent.inproc import InProcPolicy                 # the service's answers in this process, no sockets
    from tickcall.agent.actor import start_policy_service          # Ray actor (GPU when the cluster has one)
    from tickcall.agent.server import PolicyServer                 # the server itself, in threads of this process
    from tickcall.agent.config import ServeConfig                  # configs/serve*.yaml
    from tickcall.agent import protocol                            # constants, error codes, decoding

Modules: messages (the typed wire structs), protocol (constants, the one validation path), core (the
engine side: registrations, batched decisions, replies), server (I/O thread + engine thread,
latest-wins, deadlines, batching), inproc (core in the caller's thread), client (+ client_state),
actor (Ray), engines (engine from a spec), security (bind policy, CURVE), config. Nothing here imports
Ray or torch at import time except ``agent.actor`` functions when called.
"""
