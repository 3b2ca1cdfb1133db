"""The provider side: WebSocket consumer and protocol, provider tab, headless agent, benchmark endpoints."""
