"""The seed-log entries a SuperNode has already been sent, kept in its ``context.state``.

In Flower's deployment engine every message runs in a fresh ClientApp process (1.41's
subprocess isolation), so the ZO client's in-process copy of the global weights starts at
round 0 each time. The server sends a node only the entries it has not confirmed yet; a
fresh process would answer "need state" and cost a second message round trip every round.
Flower keeps ``context.state`` per node between messages, so the node keeps the log there
(a few hundred bytes a round) and the fresh process replays it locally instead.

A SuperNode that restarts loses its ``context.state`` and catches up from the server's
seed log (the need-state reply), as a client that missed rounds does.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message

from fedtune import wire

__all__ = ["extend_sync", "remember_sync"]

NODE_LOG = "fedtune.node-log"  # ConfigRecord in context.state: {"updates": entries of rounds 1..n, in order}


def extend_sync(msg: Message, context: Context) -> list[bytes] | None:
    """Prepend the entries this node kept to the message's sync payload, in place.

    The server sends ``log[first:state_round]``, the entries of rounds ``first+1 ..
    state_round``; with the kept entries of rounds ``1 .. first`` the payload then bridges
    a fresh process from round 0. Returns the payload when it covers rounds ``1 ..
    state_round`` (worth remembering), else None.
    """
    config = msg.content.get(wire.CONFIG) if msg.has_content() else None
    if not isinstance(config, ConfigRecord) or wire.UPDATES not in config:
        return None
    if wire.PARTITION in config:
        # a `fedtune run` simulation: worker processes live on and keep the synced weights,
        # and a per-node copy of the log would grow with the population
        return None
    state_round = wire.read_int(config, wire.STATE_ROUND)
    sent = wire.read_bytes_list(config, wire.UPDATES)
    first = state_round - len(sent)  # rounds first+1 .. state_round are in the message
    kept_record = context.state.get(NODE_LOG)
    kept = wire.read_bytes_list(kept_record, wire.UPDATES) if kept_record is not None else []
    if wire.WEIGHTS in msg.content or len(kept) < first:
        return None  # the kept log does not reach the sent entries: the server's catch-up decides
    merged = kept[:first] + sent
    config[wire.UPDATES] = merged
    return merged


def remember_sync(reply: Message, context: Context, entries: list[bytes] | None) -> None:
    """Keep ``entries`` (rounds 1..n) once the reply shows the client reached their state."""
    if entries is None or reply.has_error():
        return
    state = reply.content.get(wire.STATE)
    if state is None or wire.NEED_STATE in state:
        return
    context.state[NODE_LOG] = ConfigRecord({wire.UPDATES: entries})
