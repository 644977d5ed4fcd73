"""agent/: the brain. The policy service (a Ray actor answering over ZeroMQ), its wire protocol, and its
Python client. Protocol specification: docs/protocol.md ("Policy service").

    from tickcall.agent.client import PolicyClient, Reply          # DEALER client: timeouts, reconnect, re-register
    from tickcall.agent.actor import start_policy_service          # Ray actor (GPU when the cluster has one)
    from tickcall.agent.server import PolicyServer                 # the server itself, in threads of this process
    from tickcall.agent.config import ServeConfig                  # configs/serve*.yaml
    from tickcall.agent import protocol                            # constants, error codes, parsing

Modules: protocol (wire format), server (I/O thread + engine thread, latest-wins, deadlines, batching),
client, actor (Ray), engines (engine from a spec, test stand-ins), security (bind policy, CURVE),
config. Nothing here imports Ray or torch at import time except ``agent.actor`` functions when called.
"""
