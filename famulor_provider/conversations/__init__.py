"""The way back from a send: conversation polling, replies and the inbound cursor.

- :mod:`.polling`: the per-connection budget every conversation poller of a process shares;
- :mod:`.replies`: what the reply sensor and trigger read after a send;
- :mod:`.inbound_poll` and :mod:`.inbound_cursor`: the inbound trigger's poller and the cursor it
  keeps in the asset state store;
- :mod:`.inbound_messages`: the messages of a run's inbound events, in the task that consumes them.
"""
