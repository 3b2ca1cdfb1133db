"""The transport layer, below market and worker_web: how a job's runner and its providers talk.

- `protocol`: the provider protocol's JSON control messages (no Django: the headless agent speaks it too);
- `messages`: the typed channel-layer events between runners and provider consumers (`provider.*`, `runner.*`),
  and the one rule for where a hop's output goes next;
- `relay`: events between consumers and runners of one server process without the channel layer;
- `inbox`: one queue per WebSocket consumer; `daphne_fast` and `accelerator`: the relay's fast path through the
  WebSocket stack's internals, pinned and switchable.

It imports neither app: market (the runners) and worker_web (the provider endpoint) both build on it.
"""
