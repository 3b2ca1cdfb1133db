"""The provider side, split by where the code runs: the server's provider endpoint (the WebSocket consumer, the
benchmark challenge, shard downloads, the provider page) at this package's top; `agent/` on a provider's machine
(no Django); the tab's JavaScript under `static/` in a provider's browser; `testing/` (Chromium drivers) on a
developer's machine. The protocol they speak is `transport.protocol`."""
